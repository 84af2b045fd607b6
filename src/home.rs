//! `/`: what a person who opens the proxy's domain in a browser sees.

use crate::config::Config;
use crate::origin::Origin;
use crate::reply::Draft;
use http::StatusCode;

/// Text for HTML: the five characters that can end a text or an attribute, escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn draft(config: &Config, public: &Origin) -> Draft {
    if let Some(target) = &config.home {
        return Draft::redirect(StatusCode::FOUND, target.clone());
    }
    let host = escape(&public.authority());
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{host}</title></head>\n\
         <body><h1>{host}</h1>\n<p>This is a container registry.</p>\n\
         <pre>docker pull {host}/IMAGE:TAG</pre>\n</body></html>\n"
    );
    // Its policy is every answer's (`reply`): the page needs nothing it forbids.
    Draft::made(
        StatusCode::OK,
        page.into_bytes(),
        "text/html; charset=utf-8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<img src=x onerror='a(\"&\")'>"),
            "&lt;img src=x onerror=&#39;a(&quot;&amp;&quot;)&#39;&gt;"
        );
    }
}

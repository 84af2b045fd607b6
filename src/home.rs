//! `/`: what a person who opens the proxy's domain in a browser sees.

use crate::config::Config;
use crate::origin::Origin;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

pub fn response(config: &Config, public: &Origin, head_only: bool) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    if let Some(target) = config
        .home
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut().insert(header::LOCATION, target);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return r;
    }
    let host = public.authority();
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{host}</title></head>\n\
         <body><h1>{host}</h1>\n<p>This is a container registry.</p>\n\
         <pre>docker pull {host}/IMAGE:TAG</pre>\n</body></html>\n"
    );
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
    if !head_only {
        *r.body_mut() = page.into_bytes();
    }
    r
}

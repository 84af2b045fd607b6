//! Web pages on other origins (registry UIs): the preflight the proxy answers itself, and
//! which origin an answer may name (`reply` adds the headers: rule R8).

use super::*;

impl Exchange {
    /// A web page asks whether it may make a request (CORS): the proxy answers for the route
    /// that would serve it, or for the host where no one route does, and never asks upstream.
    pub(super) fn preflight(&mut self, endpoint: &Endpoint) -> Step {
        let host = self
            .public
            .as_ref()
            .map(|p| p.host.clone())
            .unwrap_or_default();
        if let Some(name) = endpoint.name() {
            if let Ok(route) = self
                .config
                .routes
                .select(&host, Some(name), self.ns.as_deref())
            {
                let route = route.clone();
                self.use_route(route);
            }
        }
        if self.cors_origin().is_none() {
            return self.error(OciError::denied(
                "this registry lets no page of that origin read it",
            ));
        }
        let mut answer = Draft::made(StatusCode::NO_CONTENT, Vec::new(), "text/plain");
        answer.body = DraftBody::Made {
            bytes: Vec::new(),
            content_type: None,
        };
        self.reply(answer)
    }

    /// The request's `Origin` (a web page's), if the route serving it (or, where no route does
    /// yet, a route of the host) lets that page read answers.
    pub(super) fn cors_origin(&self) -> Option<HeaderValue> {
        let origin = self.client_headers.get(header::ORIGIN)?;
        let page = Origin::parse(origin.to_str().ok()?).ok()?;
        self.cors_routes(|r| r.cors.contains(&page))
            .then(|| origin.clone())
    }

    /// Whether the route serving the request, or where none does yet a route of its host, is
    /// one `lists` says of. The admin's endpoints are no route's: no page reads them.
    pub(super) fn cors_routes(&self, lists: impl Fn(&Route) -> bool) -> bool {
        if self.endpoint.as_ref().is_some_and(Endpoint::is_admin) {
            return false;
        }
        let Some(host) = self.public.as_ref().map(|p| p.host.as_str()) else {
            return false;
        };
        match &self.route {
            Some(r) => lists(r),
            None => self.config.routes.serving(host).any(lists),
        }
    }
}

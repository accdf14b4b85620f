//! The router: method + path pattern → handler, and the types handlers see (`Request`,
//! `HttpError`).
//!
//! Patterns are literal segments and `{name}` parameters (`/users/{user_id}`); a final
//! `{name:path}` takes the rest of the path, slashes included. Each path segment is
//! percent-decoded once, after splitting, so `%2F` inside a parameter stays inside that
//! parameter (handlers that treat a parameter as a file name must still check it).
//! Routes are matched in registration order; a literal segment beats a parameter only by being
//! registered first (register `/users/me` before `/users/{user_id}`).
//!
//! Must never: know what a route does. It knows methods, paths, body limits and the OpenAPI
//! fragment each route carries so that the docs and the router cannot drift apart.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::Serialize;

use super::body::{BodyError, BodyReader};
use super::parse::{self, RequestHead};
use super::response::Response;

/// One item of a 422 response, FastAPI's shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationIssue {
    /// Where: `["body", "email"]`, `["query", "limit"]`, `["path", "user_id"]`.
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The `detail` of an error response: a message, or FastAPI's validation list.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Detail {
    Message(String),
    Validation(Vec<ValidationIssue>),
}

/// The error side of a handler: renders as `{"detail": ...}` with its status and headers.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: u16,
    pub detail: Detail,
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// See `Response::hold`.
    pub hold: Option<std::time::Duration>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError { status, detail: Detail::Message(message.into()), headers: Vec::new(), hold: None }
    }

    /// A 422 with one issue. `loc` is e.g. `["body", "email"]`.
    pub fn validation(loc: &[&str], msg: impl Into<String>, kind: &str) -> HttpError {
        HttpError::validation_list(vec![issue(loc, msg, kind)])
    }

    pub fn validation_list(issues: Vec<ValidationIssue>) -> HttpError {
        HttpError { status: 422, detail: Detail::Validation(issues), headers: Vec::new(), hold: None }
    }

    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> HttpError {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Ask the connection layer to hold the connection's next request back (see `Response::hold`).
    pub fn hold(mut self, d: std::time::Duration) -> HttpError {
        self.hold = Some(d);
        self
    }

    pub fn into_response(self) -> Response {
        let mut resp = Response::json(self.status, &serde_json::json!({ "detail": self.detail }));
        resp.headers.extend(self.headers);
        resp.hold = self.hold;
        resp
    }
}

/// Build one validation issue; path segments that are integers become JSON numbers, as in
/// FastAPI (`["body", "files", 0]`).
pub fn issue(loc: &[&str], msg: impl Into<String>, kind: &str) -> ValidationIssue {
    ValidationIssue {
        loc: loc
            .iter()
            .map(|s| match s.parse::<u64>() {
                Ok(n) => serde_json::Value::from(n),
                Err(_) => serde_json::Value::from(*s),
            })
            .collect(),
        msg: msg.into(),
        kind: kind.to_string(),
    }
}

impl From<BodyError> for HttpError {
    fn from(e: BodyError) -> HttpError {
        HttpError::new(e.status(), e.to_string())
    }
}

/// What a handler gets: the head, the peer, decoded path parameters and the body reader.
pub struct Request<'c> {
    pub head: RequestHead,
    pub peer: SocketAddr,
    pub params: Vec<(String, String)>,
    pub body: BodyReader<'c>,
}

impl Request<'_> {
    pub fn method(&self) -> &str {
        &self.head.method
    }

    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// First value of a header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// A decoded path parameter. Panics if the route has no such parameter: that is a bug in
    /// the route table, caught by the first test that hits the route.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("route has no parameter {name:?}"))
    }

    /// Decoded query pairs; a bad percent-escape is a 422 on `query`.
    pub fn query(&self) -> Result<Vec<(String, String)>, HttpError> {
        parse::parse_query(&self.head.query)
            .ok_or_else(|| HttpError::validation(&["query"], "Invalid percent-encoding in query string", "value_error"))
    }

    /// The whole body, within the route's limit (413 over it, 408 on a stall, 400 on bad framing).
    pub fn body_bytes(&mut self) -> Result<Vec<u8>, HttpError> {
        Ok(self.body.read_all()?)
    }
}

/// A handler: reads the request, returns a response or an error to render.
pub type Handler = Box<dyn Fn(&mut Request<'_>) -> Result<Response, HttpError> + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
    Rest(String),
}

/// One route of the table.
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    segs: Vec<Seg>,
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
    /// The `detail` of the 413 for a body over `body_limit`, when the route words its own limit
    /// (uploads state the per-file limit, not the body's); `None`: `BodyError`'s wording.
    pub too_large_detail: Option<String>,
    /// The OpenAPI operation object for this route; `None` keeps it out of the document
    /// (the docs pages themselves, as FastAPI does).
    pub doc: Option<serde_json::Value>,
    /// The handler never waits (no database, no disk, no lock held across I/O, no hashing): a
    /// worker may serve it while it watches the hot set, without first asking a spare worker to
    /// take its place (see `server.rs`). A quick handler that does wait delays other keep-alive
    /// connections' requests by as long as it waits. Default: false.
    pub quick: bool,
    handler: Handler,
}

impl Route {
    /// Set this route's body limit (bytes).
    pub fn limit(&mut self, bytes: u64) -> &mut Route {
        self.body_limit = bytes;
        self
    }

    /// Word the 413 this route's body limit gives (see `too_large_detail`).
    pub fn too_large_detail(&mut self, detail: impl Into<String>) -> &mut Route {
        self.too_large_detail = Some(detail.into());
        self
    }

    /// Declare the handler quick (see `quick`).
    pub fn quick(&mut self) -> &mut Route {
        self.quick = true;
        self
    }

    /// Attach the OpenAPI operation object.
    pub fn doc(&mut self, op: serde_json::Value) -> &mut Route {
        self.doc = Some(op);
        self
    }

    pub fn call(&self, req: &mut Request<'_>) -> Result<Response, HttpError> {
        (self.handler)(req)
    }
}

/// Result of looking a request up.
pub enum Match<'r> {
    Found(&'r Route, Vec<(String, String)>),
    /// The path exists with other methods; these go in `Allow`.
    MethodNotAllowed(Vec<&'static str>),
    /// The path exists with (or without) a trailing slash: redirect there, like FastAPI.
    Redirect(String),
    NotFound,
}

/// The route table.
pub struct Router {
    routes: Vec<Route>,
    /// Body limit for routes that do not set their own.
    pub default_body_limit: u64,
}

impl Router {
    pub fn new(default_body_limit: u64) -> Router {
        Router { routes: Vec::new(), default_body_limit }
    }

    /// Add a route. `method` is upper-case (`GET`, `POST`, ...).
    pub fn add<F>(&mut self, method: &'static str, pattern: &'static str, handler: F) -> &mut Route
    where
        F: Fn(&mut Request<'_>) -> Result<Response, HttpError> + Send + Sync + 'static,
    {
        let segs = compile(pattern);
        self.routes.push(Route {
            method,
            pattern,
            segs,
            body_limit: self.default_body_limit,
            too_large_detail: None,
            doc: None,
            quick: false,
            handler: Box::new(handler),
        });
        self.routes.last_mut().expect("just pushed")
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Replace every handler registered so far by `wrap(method, pattern, handler)`: a seam for
    /// the app to observe its routes (e.g. count and time them) without this layer knowing how.
    pub fn wrap_handlers(&mut self, mut wrap: impl FnMut(&'static str, &'static str, Handler) -> Handler) {
        for route in &mut self.routes {
            let placeholder: Handler = Box::new(|_| Err(HttpError::new(500, "Internal Server Error")));
            let handler = std::mem::replace(&mut route.handler, placeholder);
            route.handler = wrap(route.method, route.pattern, handler);
        }
    }

    /// Look up `method path`. `HEAD` falls back to `GET`.
    pub fn find(&self, method: &str, raw_path: &str) -> Match<'_> {
        let Some(segments) = split_path(raw_path) else {
            return Match::NotFound;
        };
        let mut allowed: Vec<&'static str> = Vec::new();
        let mut get_route = None;
        for route in &self.routes {
            let Some(params) = match_segs(&route.segs, &segments) else {
                continue;
            };
            if route.method == method {
                return Match::Found(route, params);
            }
            if method == "HEAD" && route.method == "GET" && get_route.is_none() {
                get_route = Some((route, params));
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method);
            }
        }
        if let Some((route, params)) = get_route {
            return Match::Found(route, params);
        }
        if !allowed.is_empty() {
            if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
                allowed.push("HEAD");
            }
            return Match::MethodNotAllowed(allowed);
        }
        // FastAPI's redirect_slashes: `/users` → `/users/` and back, when that path exists with
        // any method (Starlette redirects on a path match alone; the client then gets the 405
        // with `Allow` there, as for any other method the path does not take).
        let alt = match raw_path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p.to_string(),
            Some(_) => return Match::NotFound,
            None => format!("{raw_path}/"),
        };
        if let Some(alt_segments) = split_path(&alt) {
            if self.routes.iter().any(|r| match_segs(&r.segs, &alt_segments).is_some()) {
                return Match::Redirect(alt);
            }
        }
        Match::NotFound
    }
}

fn compile(pattern: &str) -> Vec<Seg> {
    assert!(pattern.starts_with('/'), "pattern must start with '/': {pattern}");
    pattern[1..]
        .split('/')
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                match name.strip_suffix(":path") {
                    Some(rest) => Seg::Rest(rest.to_string()),
                    None => Seg::Param(name.to_string()),
                }
            } else {
                Seg::Lit(s.to_string())
            }
        })
        .collect()
}

/// Split and decode a request path. `None` when a segment has a bad escape or is not UTF-8.
fn split_path(raw: &str) -> Option<Vec<String>> {
    let body = raw.strip_prefix('/')?;
    body.split('/').map(|s| parse::percent_decode(s, false)).collect()
}

fn match_segs(segs: &[Seg], path: &[String]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Rest(name) => {
                let rest = path.get(i..)?;
                if rest.is_empty() || rest.iter().all(|s| s.is_empty()) {
                    return None;
                }
                params.push((name.clone(), rest.join("/")));
                return Some(params);
            }
            Seg::Lit(lit) => {
                if path.get(i)? != lit {
                    return None;
                }
            }
            Seg::Param(name) => {
                let value = path.get(i)?;
                if value.is_empty() {
                    return None;
                }
                params.push((name.clone(), value.clone()));
            }
        }
    }
    (segs.len() == path.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::new(1024);
        r.add("GET", "/", |_| Ok(Response::new(200)));
        r.add("GET", "/users/", |_| Ok(Response::new(200)));
        r.add("POST", "/users/", |_| Ok(Response::new(201)));
        r.add("GET", "/users/me", |_| Ok(Response::new(200)));
        r.add("GET", "/users/{user_id}", |_| Ok(Response::new(200)));
        r.add("GET", "/static/{file:path}", |_| Ok(Response::new(200)));
        r
    }

    fn found(r: &Router, m: &str, p: &str) -> (&'static str, Vec<(String, String)>) {
        match r.find(m, p) {
            Match::Found(route, params) => (route.pattern, params),
            _ => panic!("{m} {p} not found"),
        }
    }

    #[test]
    fn literals_params_and_rest() {
        let r = router();
        assert_eq!(found(&r, "GET", "/").0, "/");
        assert_eq!(found(&r, "GET", "/users/me").0, "/users/me");
        let (p, params) = found(&r, "GET", "/users/42");
        assert_eq!(p, "/users/{user_id}");
        assert_eq!(params, vec![("user_id".into(), "42".into())]);
        let (_, params) = found(&r, "GET", "/static/vendor/a%20b.js");
        assert_eq!(params, vec![("file".into(), "vendor/a b.js".into())]);
        // An encoded slash stays inside its segment.
        let (_, params) = found(&r, "GET", "/users/a%2Fb");
        assert_eq!(params[0].1, "a/b");
    }

    #[test]
    fn head_falls_back_to_get_and_405_lists_allow() {
        let r = router();
        assert_eq!(found(&r, "HEAD", "/users/me").0, "/users/me");
        match r.find("DELETE", "/users/") {
            Match::MethodNotAllowed(allow) => assert_eq!(allow, vec!["GET", "POST", "HEAD"]),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn not_found_and_redirects() {
        let r = router();
        assert!(matches!(r.find("GET", "/nope"), Match::NotFound));
        assert!(matches!(r.find("GET", "/users/1/x"), Match::NotFound));
        assert!(matches!(r.find("GET", "/users/%zz"), Match::NotFound));
        match r.find("GET", "/users") {
            Match::Redirect(to) => assert_eq!(to, "/users/"),
            _ => panic!("expected a redirect"),
        }
        assert!(matches!(r.find("GET", "/static/"), Match::NotFound));
        // On the path alone, whatever the method: `PUT /users` goes to `/users/`, where it
        // then gets its 405.
        match r.find("PUT", "/users") {
            Match::Redirect(to) => assert_eq!(to, "/users/"),
            _ => panic!("expected a redirect for a method the other path does not take"),
        }
        match r.find("GET", "/users/me/") {
            Match::Redirect(to) => assert_eq!(to, "/users/me"),
            _ => panic!("expected a redirect"),
        }
    }

    #[test]
    fn errors_render_the_contract_shapes() {
        let resp = HttpError::new(404, "User not found").into_response();
        assert_eq!(resp.status, 404);
        let crate::http::response::Body::Bytes(b) = &resp.body else { panic!() };
        assert_eq!(b.as_slice(), br#"{"detail":"User not found"}"#);
        let resp = HttpError::validation(&["query", "limit"], "bad", "int_parsing").into_response();
        let crate::http::response::Body::Bytes(b) = &resp.body else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["detail"][0]["loc"], serde_json::json!(["query", "limit"]));
        assert_eq!(v["detail"][0]["type"], "int_parsing");
    }
}

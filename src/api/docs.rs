//! `GET /openapi.json`, `GET /docs` (Swagger UI) and `GET /redoc` (ReDoc).
//!
//! The OpenAPI document is assembled from the route table itself: every route carries its
//! operation object (`Route::doc`), and `routes` (registered last) walks the table. A route
//! without a `doc` is left out on purpose — only the docs pages themselves. The docs pages load
//! their assets from this binary (`/static/vendor/...`: Swagger UI and ReDoc, vendored in
//! `public/vendor/` and embedded by `build.rs`), so they make no request off this server in any
//! build (tests/browser checks it in Chromium with the network blocked). ReDoc's sidebar always
//! loads the Redocly logo from Redocly's CDN, so `/redoc` forbids off-site images.
//!
//! Must never: describe a route that does not exist, or miss one that does (tests check both);
//! point a docs page at anything off this server.

use serde_json::{json, Map, Value};

use super::openapi::schema_ref;
use super::{auth, files, general, teams, users, ws_api, VERSION};
use crate::http::{Response, Router};

/// What the connection layer (`http::body`) answers, for any route, while it reads a request
/// body and before the handler sees it. Added to every operation that takes a body, here in one
/// place rather than in each route's `Op`.
const BODY_ERRORS: [(u16, &str); 3] = [
    (400, "Malformed request body (bad chunked framing, or the body ended early)"),
    (408, "The request body stalled"),
    (413, "The request body is over this route's limit"),
];

/// Build the OpenAPI 3.1 document for every documented route of `r`.
pub fn document(r: &Router) -> Value {
    let mut paths = Map::new();
    for route in r.routes() {
        let Some(op) = &route.doc else { continue };
        let mut op = op.clone();
        add_path_parameters(route.pattern, &mut op);
        add_body_errors(&mut op);
        let item = paths.entry(openapi_path(route.pattern)).or_insert_with(|| json!({}));
        item[route.method.to_ascii_lowercase()] = op;
    }
    let mut schemas = Map::new();
    for part in [
        general::schemas(),
        auth::schemas(),
        users::schemas(),
        teams::schemas(),
        files::schemas(),
        ws_api::schemas(),
        validation_schemas(),
    ] {
        if let Value::Object(m) = part {
            schemas.extend(m);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Adcluster API",
            "version": VERSION,
            "description": "The Adcluster backend: accounts, teams, WebSocket messaging and file uploads."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "OAuth2PasswordBearer": {
                    "type": "oauth2",
                    "flows": { "password": { "scopes": {}, "tokenUrl": "/auth/login" } }
                }
            }
        }
    })
}

/// `{file:path}` → `{file}`; plain `{name}` stays.
fn openapi_path(pattern: &str) -> String {
    pattern.replace(":path}", "}")
}

/// Declare each `{name}` of the pattern as a required path parameter unless the operation
/// already does.
fn add_path_parameters(pattern: &str, op: &mut Value) {
    let names: Vec<&str> = pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_end_matches(":path"))
        .collect();
    if names.is_empty() {
        return;
    }
    let params =
        op.as_object_mut().expect("an operation is an object").entry("parameters").or_insert_with(|| json!([]));
    let list = params.as_array_mut().expect("parameters is an array");
    for name in names {
        let present = list.iter().any(|p| p["name"] == name && p["in"] == "path");
        if !present {
            list.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
        }
    }
}

/// Give an operation with a request body the connection layer's body errors, unless it
/// documents those statuses itself.
fn add_body_errors(op: &mut Value) {
    if op.get("requestBody").is_none() {
        return;
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    for (status, description) in BODY_ERRORS {
        responses.entry(status.to_string()).or_insert_with(|| {
            json!({ "description": description, "content": { "application/json": { "schema": schema_ref("Detail") } } })
        });
    }
}

/// FastAPI's validation error schemas (the 422 shape).
fn validation_schemas() -> Value {
    json!({
        "ValidationError": {
            "type": "object", "required": ["loc", "msg", "type"],
            "properties": {
                "loc": { "type": "array", "items": { "anyOf": [{ "type": "string" }, { "type": "integer" }] } },
                "msg": { "type": "string" },
                "type": { "type": "string" }
            }
        },
        "HTTPValidationError": {
            "type": "object",
            "properties": { "detail": { "type": "array", "items": { "$ref": "#/components/schemas/ValidationError" } } }
        },
        "Detail": {
            "type": "object", "required": ["detail"],
            "properties": { "detail": { "type": "string" } }
        }
    })
}

/// The address of an embedded docs asset (`path` relative to `public/`). `build.rs` refuses to
/// build without the ones used here, and a test checks each is embedded.
fn asset(path: &str) -> String {
    format!("/static/{path}")
}

/// The tab icon of both docs pages (Swagger UI's), so browsers do not ask for `/favicon.ico`.
fn favicon() -> String {
    asset("vendor/swagger-ui/favicon-32x32.png")
}

/// For `/redoc`: no images from elsewhere (ReDoc's bundle hard-codes the Redocly logo's CDN
/// address; blocked, the logo hides itself and the link text stays).
const REDOC_OFFLINE_CSP: &str = "img-src 'self' data: blob:";

fn swagger_html() -> String {
    let icon = favicon();
    let css = asset("vendor/swagger-ui/swagger-ui.css");
    let js = asset("vendor/swagger-ui/swagger-ui-bundle.js");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Adcluster API - Swagger UI</title>
<link rel="icon" type="image/png" href="{icon}">
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  layout: 'BaseLayout',
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
}});
</script>
</body>
</html>
"#
    )
}

fn redoc_html() -> String {
    let icon = favicon();
    let js = asset("vendor/redoc/redoc.standalone.js");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Adcluster API - ReDoc</title>
<link rel="icon" type="image/png" href="{icon}">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="{js}"></script>
</body>
</html>
"#
    )
}

/// Register the docs routes. Call last: the document is built from the routes added before.
pub fn routes(r: &mut Router) {
    let doc: &'static [u8] =
        Box::leak(serde_json::to_vec(&document(r)).expect("a JSON value serialises").into_boxed_slice());
    r.add("GET", "/openapi.json", move |_| Ok(Response::static_bytes(200, "application/json", doc)));
    let swagger: &'static [u8] = Box::leak(swagger_html().into_bytes().into_boxed_slice());
    r.add("GET", "/docs", move |_| Ok(Response::static_bytes(200, "text/html; charset=utf-8", swagger)));
    let redoc: &'static [u8] = Box::leak(redoc_html().into_bytes().into_boxed_slice());
    r.add("GET", "/redoc", move |_| {
        Ok(Response::static_bytes(200, "text/html; charset=utf-8", redoc)
            .header("content-security-policy", REDOC_OFFLINE_CSP))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pages;

    #[test]
    fn path_parameters_are_declared_once() {
        let mut op = json!({ "parameters": [{ "name": "a", "in": "path", "required": true }] });
        add_path_parameters("/x/{a}/{b:path}", &mut op);
        let names: Vec<&str> =
            op["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(openapi_path("/static/{file:path}"), "/static/{file}");
    }

    /// The `href="..."` and `src="..."` values of a page.
    fn asset_refs(html: &str) -> Vec<&str> {
        let mut refs = Vec::new();
        for attr in ["href=\"", "src=\""] {
            for (i, _) in html.match_indices(attr) {
                let rest = &html[i + attr.len()..];
                refs.push(&rest[..rest.find('"').expect("closing quote")]);
            }
        }
        refs
    }

    /// Each page loads everything from this binary, and every asset it names is embedded.
    #[test]
    fn docs_assets_are_all_embedded() {
        for (page, html) in [("/docs", swagger_html()), ("/redoc", redoc_html())] {
            let refs = asset_refs(&html);
            assert!(refs.len() >= 2, "{page}: expected an icon and the bundle, got {refs:?}");
            for r in &refs {
                let path = r.strip_prefix("/static/").unwrap_or_else(|| panic!("{page} loads {r} from elsewhere"));
                assert!(pages::find(path).is_some(), "{page} refers to /static/{path}, which is not embedded");
            }
        }
    }

    /// The embedded docs assets are byte for byte the ones recorded in `public/vendor/.sha256`
    /// (written by `scripts/vendor-docs.sh --update` from the npm tarballs it checked), and every
    /// recorded file, licences included, is embedded.
    #[test]
    fn vendored_assets_match_their_recorded_sha256() {
        use sha2::{Digest, Sha256};
        let recorded = include_str!("../../public/vendor/.sha256");
        let mut lines = recorded.lines();
        let pins = lines.next().expect("a pins line");
        assert!(pins.starts_with("# swagger-ui-dist@") && pins.contains(" redoc@"), "{pins}");
        let mut checked = 0;
        for line in lines {
            let (want, file) = line.split_once("  ").expect("sha256sum format");
            let path = format!("vendor/{file}");
            let bytes = pages::find(&path).unwrap_or_else(|| panic!("{path} is recorded but not embedded"));
            let got: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "{path} differs from its recorded sha256");
            checked += 1;
        }
        let embedded = pages::PUBLIC_FILES.iter().filter(|(p, _)| p.starts_with("vendor/")).count();
        assert_eq!(checked, embedded, "every embedded vendor file is recorded, and no more");
        for licence in ["vendor/swagger-ui/LICENSE", "vendor/redoc/LICENSE"] {
            assert!(pages::find(licence).is_some(), "{licence} travels with the code");
        }
    }

    #[test]
    fn operations_with_a_body_document_the_body_errors_of_the_http_layer() {
        let mut r = Router::new(1024);
        let with_body = json!({ "requestBody": {}, "responses": { "400": { "description": "mine" } } });
        r.add("POST", "/a", |_| Ok(Response::new(200))).doc(with_body);
        r.add("GET", "/b", |_| Ok(Response::new(200))).doc(json!({ "responses": {} }));
        let doc = document(&r);
        let a = &doc["paths"]["/a"]["post"]["responses"];
        assert_eq!(a["400"]["description"], "mine", "a route's own wording wins");
        for s in ["408", "413"] {
            assert_eq!(a[s]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Detail", "{s}");
        }
        assert_eq!(doc["paths"]["/b"]["get"]["responses"], json!({}), "no body, no body errors");
    }
}

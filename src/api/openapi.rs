//! A small builder for OpenAPI operation objects, so each route's documentation sits next to
//! its registration and reads like the contract table.
//! Must never: invent behaviour — every status listed here is one the handler can answer.

use serde_json::{json, Map, Value};

/// `{"$ref": "#/components/schemas/<name>"}`
pub fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An integer the handler reads into an `i64` (ids, offsets), at least `minimum`. The bounds
/// belong to the type: without a maximum, 2^63 is a valid id by the document and a 422 by the
/// server.
pub fn int64(minimum: i64) -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": minimum, "maximum": i64::MAX })
}

/// The `skip` query parameter's schema: an offset, 0 by default.
pub fn skip() -> Value {
    let mut s = int64(0);
    s["default"] = json!(0);
    s
}

/// An operation object under construction.
pub struct Op(Map<String, Value>);

impl Op {
    pub fn new(tag: &str, summary: &str, operation_id: &str) -> Op {
        let mut m = Map::new();
        m.insert("tags".into(), json!([tag]));
        m.insert("summary".into(), json!(summary));
        m.insert("operationId".into(), json!(operation_id));
        m.insert("responses".into(), json!({}));
        Op(m)
    }

    fn responses(&mut self) -> &mut Map<String, Value> {
        self.0.get_mut("responses").and_then(Value::as_object_mut).expect("responses is an object")
    }

    /// A JSON response.
    pub fn json(mut self, status: u16, description: &str, schema: Value) -> Op {
        self.responses().insert(
            status.to_string(),
            json!({ "description": description, "content": { "application/json": { "schema": schema } } }),
        );
        self
    }

    /// A response whose body is raw bytes (a file), or empty.
    pub fn bytes(mut self, status: u16, description: &str) -> Op {
        let content = if status == 304 {
            json!({})
        } else {
            json!({ "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } })
        };
        self.responses().insert(status.to_string(), json!({ "description": description, "content": content }));
        self
    }

    /// A response with headers (e.g. `Retry-After`).
    fn with_header(mut self, status: u16, header: &str) -> Op {
        if let Some(r) = self.responses().get_mut(&status.to_string()) {
            r["headers"] = json!({ header: { "schema": { "type": "string" } } });
        }
        self
    }

    /// Error responses with the contract's shapes (`{"detail"}`; 422 is FastAPI's list).
    pub fn errors(mut self, statuses: &[u16]) -> Op {
        for &s in statuses {
            let (desc, schema) = match s {
                422 => ("Validation Error", schema_ref("HTTPValidationError")),
                _ => (crate::http::response::reason(s), schema_ref("Detail")),
            };
            self = self.json(s, desc, schema);
            if s == 429 || s == 503 {
                self = self.with_header(s, "Retry-After");
            }
        }
        self
    }

    /// A request body; `content` pairs a media type with its schema.
    pub fn body(mut self, content: &[(&str, Value)]) -> Op {
        let content: Map<String, Value> =
            content.iter().map(|(ct, schema)| (ct.to_string(), json!({ "schema": schema }))).collect();
        self.0.insert("requestBody".into(), json!({ "required": true, "content": content }));
        self
    }

    /// A parameter (`in` is `query` or `path`).
    pub fn param(mut self, location: &str, name: &str, required: bool, schema: Value) -> Op {
        let list = self.0.entry("parameters").or_insert_with(|| json!([]));
        list.as_array_mut().expect("parameters is an array").push(json!({
            "name": name, "in": location, "required": required, "schema": schema
        }));
        self
    }

    /// Requires a bearer token (Swagger UI's Authorize button supplies it).
    pub fn secured(mut self) -> Op {
        self.0.insert("security".into(), json!([{ "OAuth2PasswordBearer": [] }]));
        self
    }

    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

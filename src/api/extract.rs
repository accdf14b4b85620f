//! Reading request input the way FastAPI does, with its 422 shapes: JSON object bodies,
//! OAuth2 password forms, integer path and query parameters. Every problem found is collected,
//! so one 422 lists all of them (`loc`, `msg`, `type` as pydantic v2 words them).
//!
//! Must never: accept a body it could not parse as "empty", coerce types silently (a JSON
//! number where a string is expected is a 422, as in pydantic's strict-for-strings mode), or
//! hand a handler a string holding U+0000 (PostgreSQL `text` cannot store it: that was a 500).

use serde_json::{Map, Value};

use crate::http::router::{issue, ValidationIssue};
use crate::http::{HttpError, Request};

/// The pattern every string field of a request body must match: no U+0000, which PostgreSQL
/// `text` cannot hold. The OpenAPI schemas declare it (`"pattern"`), and `Fields` answers a 422
/// `string_pattern_mismatch` naming the field, as pydantic does for a field with a pattern.
pub const NO_NUL_PATTERN: &str = "^[^\\x00]*$";

/// The fields of a JSON object body (or of a form, as strings), with the issues found so far.
pub struct Fields {
    map: Map<String, Value>,
    pub issues: Vec<ValidationIssue>,
}

/// pydantic's answer to a body that is not a JSON object.
fn not_an_object() -> HttpError {
    HttpError::validation(
        &["body"],
        "Input should be a valid dictionary or object to extract fields from",
        "model_attributes_type",
    )
}

/// Whether a request's `Content-Type` lets its body be read as JSON, by FastAPI's rule: none at
/// all, `application/json`, or `application/<anything>+json`, parameters (`; charset=utf-8`) and
/// letter case aside.
pub fn is_json_media_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

impl Fields {
    /// Read the body as a JSON object. Malformed JSON, a missing body and a non-object are 422s;
    /// so is a body declared as something else than JSON (`text/plain`, a form), as in FastAPI,
    /// which reads a body as JSON only without a `Content-Type` or with a JSON one
    /// ([`is_json_media_type`]) and otherwise validates the raw bytes, which are no object.
    /// (`POST /auth/login` reads its body itself: it takes forms too.)
    pub fn from_json(req: &mut Request<'_>) -> Result<Fields, HttpError> {
        let bytes = req.body_bytes()?;
        Fields::parse_declared_json(req.header("content-type"), &bytes)
    }

    /// A body already read, under its declared content type: JSON as [`Fields::from_json`] reads it.
    pub fn parse_declared_json(content_type: Option<&str>, bytes: &[u8]) -> Result<Fields, HttpError> {
        let empty = bytes.iter().all(u8::is_ascii_whitespace);
        if !empty && !is_json_media_type(content_type) {
            return Err(not_an_object());
        }
        Fields::parse_json(bytes)
    }

    pub fn parse_json(bytes: &[u8]) -> Result<Fields, HttpError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(HttpError::validation(&["body"], "Field required", "missing"));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            HttpError::validation_list(vec![issue(
                &["body", &json_error_offset(bytes, &e).to_string()],
                format!("JSON decode error: {e}"),
                "json_invalid",
            )])
        })?;
        match value {
            Value::Object(map) => Ok(Fields { map, issues: Vec::new() }),
            _ => Err(not_an_object()),
        }
    }

    /// Read an `application/x-www-form-urlencoded` body; every value is a string.
    pub fn from_form(req: &mut Request<'_>) -> Result<Fields, HttpError> {
        let bytes = req.body_bytes()?;
        Fields::parse_form(&bytes)
    }

    pub fn parse_form(bytes: &[u8]) -> Result<Fields, HttpError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| HttpError::validation(&["body"], "Form body is not UTF-8", "value_error"))?;
        let pairs = crate::http::parse::parse_query(text)
            .ok_or_else(|| HttpError::validation(&["body"], "Invalid percent-encoding in form body", "value_error"))?;
        let mut map = Map::new();
        for (k, v) in pairs {
            // A field given twice: the last value, as FastAPI's form parsing keeps.
            map.insert(k, Value::String(v));
        }
        Ok(Fields { map, issues: Vec::new() })
    }

    /// A required string field. Records `missing` or `string_type` and returns `None` on error.
    pub fn required_str(&mut self, name: &str) -> Option<String> {
        match self.map.get(name) {
            None => {
                self.issues.push(issue(&["body", name], "Field required", "missing"));
                None
            }
            Some(Value::String(s)) => no_nul(&mut self.issues, name, s),
            _ => {
                self.issues.push(issue(&["body", name], "Input should be a valid string", "string_type"));
                None
            }
        }
    }

    /// An optional string field: absent or `null` is `Ok(None)`.
    pub fn optional_str(&mut self, name: &str) -> Option<String> {
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => no_nul(&mut self.issues, name, s),
            Some(_) => {
                self.issues.push(issue(&["body", name], "Input should be a valid string", "string_type"));
                None
            }
        }
    }

    /// A required integer field that must fit an `i64`. A JSON number is an integer when it has
    /// no fractional part, as JSON Schema and pydantic say: `3`, `3.0` and `3e0` are all 3, while
    /// `3.5` is `int_from_float`. A string holding an integer (`"3"`, `" 3 "`, `"3.0"`) is one
    /// too, as in pydantic's lax mode (FastAPI's default); any other string is `int_parsing`.
    pub fn required_i64(&mut self, name: &str) -> Option<i64> {
        let found = match self.map.get(name) {
            None => Err(("Field required".to_string(), "missing")),
            Some(Value::Number(n)) => number_to_i64(n),
            Some(Value::String(s)) => parse_int_text(s).ok_or_else(|| {
                ("Input should be a valid integer, unable to parse string as an integer".to_string(), "int_parsing")
            }),
            Some(_) => Err(("Input should be a valid integer".to_string(), "int_type")),
        };
        found.map_err(|(msg, kind)| self.issues.push(issue(&["body", name], msg, kind))).ok()
    }

    /// Check a string's length in characters; records pydantic's messages.
    pub fn check_len(&mut self, name: &str, value: &str, min: usize, max: usize) -> bool {
        let n = value.chars().count();
        if n < min {
            let plural = if min == 1 { "character" } else { "characters" };
            self.issues.push(issue(
                &["body", name],
                format!("String should have at least {min} {plural}"),
                "string_too_short",
            ));
            false
        } else if n > max {
            self.issues.push(issue(
                &["body", name],
                format!("String should have at most {max} characters"),
                "string_too_long",
            ));
            false
        } else {
            true
        }
    }

    /// Record a custom problem with a field.
    pub fn problem(&mut self, name: &str, msg: impl Into<String>, kind: &str) {
        self.issues.push(issue(&["body", name], msg, kind));
    }

    /// `Err(422)` listing every issue, or `Ok` when there were none.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(HttpError::validation_list(std::mem::take(&mut self.issues)))
        }
    }
}

/// Where in the body a JSON error was found, as FastAPI's `loc` gives it (Python's `pos`): the
/// number of characters before it, counted from 0 over the whole body. serde_json reports a
/// line and a 1-based column of bytes on that line.
fn json_error_offset(bytes: &[u8], e: &serde_json::Error) -> usize {
    let line_start: usize =
        bytes.split_inclusive(|&b| b == b'\n').take(e.line().saturating_sub(1)).map(<[u8]>::len).sum();
    let end = (line_start + e.column().saturating_sub(1)).min(bytes.len());
    // Characters, not bytes: every byte that does not continue a UTF-8 sequence starts one.
    bytes[..end].iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

/// A JSON number as an `i64`, or pydantic's message and type for why it is not one.
fn number_to_i64(n: &serde_json::Number) -> Result<i64, (String, &'static str)> {
    // 2^63 as an f64 (exact): the first value above i64::MAX.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let too_big = || (format!("Input should be less than or equal to {}", i64::MAX), "less_than_equal");
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.as_u64().is_some() {
        return Err(too_big());
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(("Input should be a valid integer, got a number with a fractional part".into(), "int_from_float"));
    }
    if f >= TWO_63 {
        return Err(too_big());
    }
    if f < -TWO_63 {
        return Err((format!("Input should be greater than or equal to {}", i64::MIN), "greater_than_equal"));
    }
    Ok(f as i64)
}

/// `Some(s)`, or `None` with a `string_pattern_mismatch` issue when `s` holds a NUL.
fn no_nul(issues: &mut Vec<ValidationIssue>, name: &str, s: &str) -> Option<String> {
    if s.contains('\0') {
        issues.push(issue(
            &["body", name],
            format!("String should match pattern '{NO_NUL_PATTERN}'"),
            "string_pattern_mismatch",
        ));
        return None;
    }
    Some(s.to_string())
}

/// Whether the request's content type is a URL-encoded form.
pub fn is_form(req: &Request<'_>) -> bool {
    req.header("content-type")
        .map(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        .unwrap_or(false)
}

/// Read an integer from text (a path or query parameter) as pydantic does: surrounding
/// whitespace is ignored, and so is a fraction made only of zeros (`"2.0"`, `"2."` are 2: JSON
/// Schema and FastAPI both call that an integer). `None` for anything else, or past the i64 range.
pub fn parse_int_text(raw: &str) -> Option<i64> {
    let s = raw.trim();
    let digits = match s.split_once('.') {
        Some((int, frac)) if frac.bytes().all(|b| b == b'0') => int,
        Some(_) => return None,
        None => s,
    };
    digits.parse::<i64>().ok()
}

/// An integer path parameter: 422 `int_parsing` when it is not one.
pub fn path_i64(req: &Request<'_>, name: &str) -> Result<i64, HttpError> {
    parse_int_text(req.param(name)).ok_or_else(|| {
        HttpError::validation(
            &["path", name],
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
        )
    })
}

/// An integer query parameter with a default and inclusive bounds; problems go to `issues`.
pub fn query_i64(
    pairs: &[(String, String)],
    name: &str,
    default: i64,
    min: Option<i64>,
    max: Option<i64>,
    issues: &mut Vec<ValidationIssue>,
) -> i64 {
    let Some(raw) = crate::http::parse::last(pairs, name) else { return default };
    let Some(n) = parse_int_text(raw) else {
        issues.push(issue(
            &["query", name],
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
        ));
        return default;
    };
    if let Some(min) = min.filter(|&m| n < m) {
        issues.push(issue(
            &["query", name],
            format!("Input should be greater than or equal to {min}"),
            "greater_than_equal",
        ));
    } else if let Some(max) = max.filter(|&m| n > m) {
        issues.push(issue(&["query", name], format!("Input should be less than or equal to {max}"), "less_than_equal"));
    }
    n
}

/// The longest email address, in characters (the document's `maxLength`).
pub const EMAIL_MAX: usize = 254;

/// `skip` (≥ 0, default 0) and `limit` (1..=1000, default 100) of a list endpoint, or the 422.
pub fn pagination(req: &Request<'_>) -> Result<(i64, i64), HttpError> {
    let pairs = req.query()?;
    let mut issues = Vec::new();
    let skip = query_i64(&pairs, "skip", 0, Some(0), None, &mut issues);
    let limit = query_i64(&pairs, "limit", 100, Some(1), Some(1000), &mut issues);
    if issues.is_empty() {
        Ok((skip, limit))
    } else {
        Err(HttpError::validation_list(issues))
    }
}

/// An email address as typed, trimmed and in Unicode NFC (as email-validator stores it): `ü`
/// sent as `u` + U+0308 and as one code point is one address. Logins look up what this gives.
pub fn email_nfc(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    raw.trim().nfc().collect()
}

/// Validate an email address the way a user expects: one `@`, a non-empty local part of at most
/// 64 characters, a domain with a dot, no spaces or control characters, at most 254 in all.
/// Returns the address with its domain lower-cased, or the reason it is not valid.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let nfc = email_nfc(raw);
    let s = nfc.as_str();
    if s.chars().count() > EMAIL_MAX {
        return Err("The email address is too long");
    }
    let Some((local, domain)) = s.rsplit_once('@') else { return Err("An email address must have an @-sign.") };
    if local.is_empty() {
        return Err("There must be something before the @-sign.");
    }
    if local.chars().count() > 64 {
        return Err("The part before the @-sign is too long.");
    }
    if domain.is_empty() {
        return Err("There must be something after the @-sign.");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) || local.contains('@') {
        return Err("The email address contains invalid characters.");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("The part before the @-sign is not valid.");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return Err("The part after the @-sign is not valid. It should have a period.");
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(err: HttpError) -> Vec<ValidationIssue> {
        match err.detail {
            crate::http::router::Detail::Validation(v) => v,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn json_bodies() {
        let issues = detail(Fields::parse_json(b"{not json").err().unwrap());
        assert_eq!(issues[0].kind, "json_invalid");
        // `loc` is FastAPI's: characters before the error, from 0, over every line.
        assert_eq!(issues[0].loc, vec![serde_json::json!("body"), serde_json::json!(1)]);
        let at = |body: &str| detail(Fields::parse_json(body.as_bytes()).err().unwrap())[0].loc[1].clone();
        assert_eq!(at("{\n  \"é\": 1,\n  x}"), serde_json::json!(14));
        assert_eq!(detail(Fields::parse_json(b"").err().unwrap())[0].kind, "missing");
        assert_eq!(detail(Fields::parse_json(b"[1]").err().unwrap())[0].kind, "model_attributes_type");
        let mut f = Fields::parse_json(br#"{"email": 3, "full_name": null}"#).unwrap();
        assert_eq!(f.required_str("email"), None);
        assert_eq!(f.required_str("password"), None);
        assert_eq!(f.optional_str("full_name"), None);
        let issues = detail(f.finish().unwrap_err());
        assert_eq!(issues.len(), 2);
        assert_eq!((issues[0].kind.as_str(), issues[1].kind.as_str()), ("string_type", "missing"));
        assert_eq!(issues[1].loc, vec![serde_json::json!("body"), serde_json::json!("password")]);
    }

    #[test]
    fn json_media_types_are_fastapis() {
        for ct in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/merge-patch+json"),
        ] {
            assert!(is_json_media_type(ct), "{ct:?}");
        }
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/json"),
            Some(""),
            Some("application/jsonx"),
        ] {
            assert!(!is_json_media_type(ct), "{ct:?}");
        }
    }

    #[test]
    fn integers_are_numbers_without_a_fraction_that_fit_an_i64() {
        let body = br#"{"a": 3, "b": -129.0, "c": 3e0, "d": 2.5, "e": 9223372036854775808, "f": -1e19,
                        "g": "3", "h": 1e19, "i": -9223372036854775808, "j": " 4.0 ", "k": "4x",
                        "l": [4], "m": null}"#;
        let mut f = Fields::parse_json(body).unwrap();
        let got: Vec<Option<i64>> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "absent"]
            .iter()
            .map(|n| f.required_i64(n))
            .collect();
        let want = [Some(3), Some(-129), Some(3), None, None, None, Some(3), None, Some(i64::MIN), Some(4)];
        assert_eq!(got, want.into_iter().chain([None; 4]).collect::<Vec<_>>());
        let kinds: Vec<String> = f.issues.iter().map(|i| i.kind.clone()).collect();
        let want = [
            "int_from_float",
            "less_than_equal",
            "greater_than_equal",
            "less_than_equal",
            "int_parsing",
            "int_type",
            "int_type",
            "missing",
        ];
        assert_eq!(kinds, want);
    }

    #[test]
    fn integer_text_may_end_in_zeros_after_the_point() {
        let ok = [("7", 7), (" 7 ", 7), ("7.0", 7), ("7.", 7), ("-7.000", -7), ("+7", 7), ("-0.0", 0)];
        for (text, n) in ok {
            assert_eq!(parse_int_text(text), Some(n), "{text:?}");
        }
        assert_eq!(parse_int_text("9223372036854775807.0"), Some(i64::MAX));
        for text in ["", ".0", "7.5", "7.0.0", "7.0a", "1e3", "0x10", "9223372036854775808", "7 .0", "٧"] {
            assert_eq!(parse_int_text(text), None, "{text:?}");
        }
    }

    #[test]
    fn nul_is_refused_in_every_string_field() {
        let mut f = Fields::parse_json(br#"{"a": "x\u0000", "b": "\u0000"}"#).unwrap();
        assert_eq!(f.required_str("a"), None);
        assert_eq!(f.optional_str("b"), None);
        let issues = detail(f.finish().unwrap_err());
        assert_eq!(issues.len(), 2);
        assert!(issues.iter().all(|i| i.kind == "string_pattern_mismatch"));
        assert_eq!(issues[0].msg, r"String should match pattern '^[^\x00]*$'");
        let mut f = Fields::parse_form(b"username=a%00&password=ok").unwrap();
        assert_eq!(f.required_str("username"), None);
        assert_eq!(f.required_str("password").as_deref(), Some("ok"));
    }

    #[test]
    fn a_name_given_twice_means_its_last_value() {
        let mut f = Fields::parse_form(b"password=wrong&username=a&password=right").unwrap();
        assert_eq!(f.required_str("password").as_deref(), Some("right"));
        let pairs = crate::http::parse::parse_query("skip=0&limit=5&skip=7").unwrap();
        let mut issues = Vec::new();
        assert_eq!(query_i64(&pairs, "skip", 0, Some(0), None, &mut issues), 7);
        assert!(issues.is_empty());
    }

    #[test]
    fn lengths_and_query_bounds() {
        let mut f = Fields::parse_json(b"{}").unwrap();
        assert!(!f.check_len("password", "1234567", 8, 100));
        assert!(f.check_len("password", "12345678", 8, 100));
        assert_eq!(f.issues[0].msg, "String should have at least 8 characters");
        let pairs = vec![("skip".to_string(), "-1".to_string()), ("limit".to_string(), "1001".to_string())];
        let mut issues = Vec::new();
        query_i64(&pairs, "skip", 0, Some(0), None, &mut issues);
        query_i64(&pairs, "limit", 100, Some(1), Some(1000), &mut issues);
        assert_eq!(query_i64(&pairs, "absent", 7, None, None, &mut issues), 7);
        let kinds: Vec<&str> = issues.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, vec!["greater_than_equal", "less_than_equal"]);
    }

    #[test]
    fn emails() {
        assert_eq!(normalize_email(" Alice@Example.COM ").unwrap(), "Alice@example.com");
        for bad in ["", "plain", "@x.io", "a@", "a@b", "a b@x.io", "a@@x.io", "a@x..io", ".a@x.io", "a@-x.io"] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_email("user.name+tag@sub.example.co.kr").is_ok());
        assert!(normalize_email("사용자@예시.한국").is_ok());
        // Unicode NFC first: a decomposed `ü` is the composed one, in either part.
        assert_eq!(normalize_email("u\u{308}n@exa\u{308}mple.com").unwrap(), "\u{fc}n@ex\u{e4}mple.com");
        // At most 254 characters (not bytes: the document's maxLength counts characters).
        let at = |n: usize, c: &str| format!("{}@{}.kr", "u", c.repeat(n - 5));
        assert_eq!(at(254, "예").chars().count(), 254);
        assert!(normalize_email(&at(254, "예")).is_ok());
        assert!(normalize_email(&at(255, "예")).is_err());
    }
}

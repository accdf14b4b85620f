//! `/teams/...`: the contract's "Teams" section.
//! Must never: let a non-member (who is not a superuser) add members to a team.

use std::sync::Arc;

use serde_json::{json, Value};

use super::extract::{pagination, path_i64, Fields, NO_NUL_PATTERN};
use super::openapi::{int64, schema_ref, skip, Op};
use super::App;
use crate::db::{teams, users};
use crate::http::{HttpError, Request, Response, Router};

/// Team name length bounds, in characters, of the name as sent (before trimming).
pub const NAME_MAX: usize = 100;

/// The characters `str::trim` removes (Unicode `White_Space`, what `char::is_whitespace` says),
/// as regex class ranges. Spelled out because `\s` differs between the regex engines that read
/// the document (Python's counts U+001C..U+001F, ECMAScript's counts U+FEFF; Rust's neither).
const WHITESPACE: &[(char, char)] = &[
    ('\t', '\r'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// A team name's pattern: no NUL, and something left after trimming.
pub fn name_pattern() -> String {
    let class: String =
        WHITESPACE
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    format!("\\u{:04X}", a as u32)
                } else {
                    format!("\\u{:04X}-\\u{:04X}", a as u32, b as u32)
                }
            })
            .collect();
    format!("^[^\\x00]*[^\\x00{class}][^\\x00]*$")
}
pub const DESCRIPTION_MAX: usize = 2000;

pub fn routes(r: &mut Router, app: &Arc<App>) {
    let a = app.clone();
    r.add("POST", "/teams/", move |req| create(&a, req)).doc(
        Op::new("teams", "Create a team (the caller is its first member)", "create_team")
            .body(&[("application/json", schema_ref("TeamCreate"))])
            .secured()
            .json(201, "The new team", schema_ref("Team"))
            .errors(&[401, 409, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/teams/", move |req| list(&a, req)).doc(
        Op::new("teams", "List teams, ordered by id", "list_teams")
            .param("query", "skip", false, skip())
            .param("query", "limit", false, json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }))
            .secured()
            .json(200, "Teams", json!({ "type": "array", "items": schema_ref("Team") }))
            .errors(&[401, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/teams/{team_id}", move |req| get(&a, req)).doc(
        Op::new("teams", "A team by id", "read_team")
            .param("path", "team_id", true, int64(i64::MIN))
            .secured()
            .json(200, "The team", schema_ref("Team"))
            .errors(&[401, 404, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("POST", "/teams/{team_id}/members", move |req| add_member(&a, req)).doc(
        Op::new("teams", "Add a member (members of the team and superusers only)", "add_team_member")
            .param("path", "team_id", true, int64(i64::MIN))
            .body(&[("application/json", schema_ref("TeamMemberAdd"))])
            .secured()
            .json(200, "The team", schema_ref("Team"))
            .errors(&[401, 403, 404, 422, 503])
            .build(),
    );
}

fn create(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let caller = app.auth.current_user(&app.db, req)?;
    let mut f = Fields::from_json(req)?;
    // Limits apply to the name as sent, as the document says; then it is stored trimmed, so
    // "Sales" and "Sales " are one team.
    let name = f.required_str("name");
    let description = f.optional_str("description");
    if let Some(n) = &name {
        if f.check_len("name", n, 1, NAME_MAX) && n.trim().is_empty() {
            f.problem("name", format!("String should match pattern '{}'", name_pattern()), "string_pattern_mismatch");
        }
    }
    let name = name.map(|n| n.trim().to_string());
    if let Some(d) = &description {
        f.check_len("description", d, 0, DESCRIPTION_MAX);
    }
    f.finish()?;
    let mut c = app.conn()?;
    match teams::create(&mut c, &name.unwrap_or_default(), description.as_deref(), caller.id) {
        Ok(team) => Ok(Response::json(201, &team.to_json())),
        Err(e) if e.is_unique_violation() => Err(HttpError::new(409, "Team name already exists")),
        Err(e) => Err(app.db_err(e)),
    }
}

fn list(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    app.auth.current_user(&app.db, req)?;
    let (skip, limit) = pagination(req)?;
    let mut c = app.conn()?;
    let all = teams::list(&mut c, skip, limit).map_err(|e| app.db_err(e))?;
    Ok(Response::json(200, &Value::Array(all.iter().map(teams::Team::to_json).collect())))
}

fn get(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    app.auth.current_user(&app.db, req)?;
    let id = path_i64(req, "team_id")?;
    let mut c = app.conn()?;
    match teams::get(&mut c, id).map_err(|e| app.db_err(e))? {
        Some(t) => Ok(Response::json(200, &t.to_json())),
        None => Err(HttpError::new(404, "Team not found")),
    }
}

fn add_member(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let caller = app.auth.current_user(&app.db, req)?;
    let team_id = path_i64(req, "team_id")?;
    let mut f = Fields::from_json(req)?;
    let user_id = f.required_i64("user_id");
    f.finish()?;
    let user_id = user_id.unwrap_or_default();
    let mut c = app.conn()?;
    let team =
        teams::get(&mut c, team_id).map_err(|e| app.db_err(e))?.ok_or_else(|| HttpError::new(404, "Team not found"))?;
    if !caller.is_superuser && !team.members.iter().any(|m| m.id == caller.id) {
        return Err(HttpError::new(403, "Only members of this team can add members"));
    }
    if users::by_id(&mut c, user_id).map_err(|e| app.db_err(e))?.is_none() {
        return Err(HttpError::new(404, "User not found"));
    }
    match teams::add_member(&mut c, team_id, user_id) {
        Ok(()) => {}
        // The user (or the team) went away between the checks above and the insert: a
        // concurrent delete, or a restore. Not found, as it would be a moment later.
        Err(e) if e.is_foreign_key_violation() => {
            let team_left = teams::get(&mut c, team_id).map_err(|e| app.db_err(e))?.is_some();
            return Err(HttpError::new(404, if team_left { "User not found" } else { "Team not found" }));
        }
        Err(e) => return Err(app.db_err(e)),
    }
    let team =
        teams::get(&mut c, team_id).map_err(|e| app.db_err(e))?.ok_or_else(|| HttpError::new(404, "Team not found"))?;
    Ok(Response::json(200, &team.to_json()))
}

pub fn schemas() -> Value {
    json!({
        "Team": {
            "type": "object", "required": ["id", "name", "description", "created_at", "members"],
            "properties": {
                "id": { "type": "integer" },
                "name": { "type": "string" },
                "description": { "anyOf": [{ "type": "string" }, { "type": "null" }] },
                "created_at": { "type": "string", "format": "date-time" },
                "members": { "type": "array", "items": schema_ref("User") }
            }
        },
        "TeamCreate": {
            "type": "object", "required": ["name"],
            "properties": {
                "name": { "type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": name_pattern() },
                "description": {
                    "anyOf": [{ "type": "string", "maxLength": DESCRIPTION_MAX, "pattern": NO_NUL_PATTERN }, { "type": "null" }]
                }
            }
        },
        "TeamMemberAdd": {
            "type": "object", "required": ["user_id"],
            "properties": { "user_id": int64(i64::MIN) }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_pattern_spells_out_what_trim_removes() {
        let listed = |c: char| WHITESPACE.iter().any(|&(a, b)| (a..=b).contains(&c));
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(listed(c), c.is_whitespace(), "U+{:04X}", c as u32);
        }
        let p = name_pattern();
        assert!(p.starts_with(r"^[^\x00]*[^\x00\u0009-\u000D\u0020\u0085"), "{p}");
        assert!(p.ends_with(r"\u3000][^\x00]*$"), "{p}");
    }
}

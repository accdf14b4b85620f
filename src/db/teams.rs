//! Queries on `teams` and `team_members`. Every query is parameterised.
//! Must never: return a team without its members (the contract's team object includes them).

use std::time::SystemTime;

use postgres::types::Type;
use serde_json::{json, Value};

use super::users::User;
use super::DbError;

#[derive(Debug, Clone)]
pub struct Team {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub created_at: SystemTime,
    pub members: Vec<User>,
}

impl Team {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "created_at": crate::util::time::rfc3339(self.created_at),
            "members": self.members.iter().map(User::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Create a team with its creator as first member, in one transaction, and read it back in that
/// transaction (read after the commit, a restore committed in between would have replaced it).
/// A duplicate name is `DbError::is_unique_violation`.
pub fn create(c: &mut postgres::Client, name: &str, description: Option<&str>, creator: i64) -> Result<Team, DbError> {
    let mut tx = c.transaction()?;
    let row = tx.query_one(
        "INSERT INTO teams (name, description) VALUES ($1, $2) RETURNING id, name, description, created_at",
        &[&name, &description],
    )?;
    let id: i64 = row.get(0);
    tx.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1, $2)", &[&id, &creator])?;
    let team = load(&mut tx, Some(&[id]), 0, 1)?.pop();
    tx.commit()?;
    team.ok_or_else(|| DbError::Query { code: None, message: "team vanished after insert".into() })
}

/// The members of the teams in `t` (a CTE of `id, name, description, created_at`), one row per
/// member, or one row with NULL member columns for a team with none.
const WITH_MEMBERS: &str = "SELECT t.id, t.name, t.description, t.created_at, \
     u.id, u.email, u.hashed_password, u.full_name, u.is_active, u.is_superuser, u.created_at \
     FROM t LEFT JOIN team_members m ON m.team_id = t.id LEFT JOIN users u ON u.id = m.user_id \
     ORDER BY t.id, m.joined_at, u.id";

/// Teams (with members) whose ids are in `ids`, or all teams when `ids` is `None`; by id. One
/// statement, so one snapshot: two (teams, then members) could see a restore or a delete
/// commit between them, and answer a team without its members.
fn load(
    c: &mut impl postgres::GenericClient,
    ids: Option<&[i64]>,
    skip: i64,
    limit: i64,
) -> Result<Vec<Team>, DbError> {
    let rows = match ids {
        Some(ids) => c.query_typed(
            &format!(
                "WITH t AS (SELECT id, name, description, created_at FROM teams WHERE id = ANY($1)) {WITH_MEMBERS}"
            ),
            &[(&ids, Type::INT8_ARRAY)],
        )?,
        None => c.query_typed(
            &format!(
                "WITH t AS (SELECT id, name, description, created_at FROM teams ORDER BY id OFFSET $1 LIMIT $2) \
                 {WITH_MEMBERS}"
            ),
            &[(&skip, Type::INT8), (&limit, Type::INT8)],
        )?,
    };
    let mut out: Vec<Team> = Vec::new();
    for r in &rows {
        let id: i64 = r.get(0);
        if out.last().map(|t| t.id) != Some(id) {
            out.push(Team { id, name: r.get(1), description: r.get(2), created_at: r.get(3), members: Vec::new() });
        }
        let Some(user_id) = r.get::<_, Option<i64>>(4) else { continue };
        let team = out.last_mut().expect("pushed above");
        team.members.push(User {
            id: user_id,
            email: r.get(5),
            hashed_password: r.get(6),
            full_name: r.get(7),
            is_active: r.get(8),
            is_superuser: r.get(9),
            created_at: r.get(10),
        });
    }
    Ok(out)
}

pub fn list(c: &mut postgres::Client, skip: i64, limit: i64) -> Result<Vec<Team>, DbError> {
    load(c, None, skip, limit)
}

pub fn get(c: &mut postgres::Client, id: i64) -> Result<Option<Team>, DbError> {
    Ok(load(c, Some(&[id]), 0, 1)?.pop())
}

/// Add a member; adding an existing member changes nothing.
pub fn add_member(c: &mut postgres::Client, team_id: i64, user_id: i64) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO team_members (team_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&team_id, &user_id],
    )?;
    Ok(())
}

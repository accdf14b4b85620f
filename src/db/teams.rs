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

/// Create a team with its creator as first member, in one transaction. A duplicate name is
/// `DbError::is_unique_violation`.
pub fn create(c: &mut postgres::Client, name: &str, description: Option<&str>, creator: i64) -> Result<Team, DbError> {
    let mut tx = c.transaction()?;
    let row = tx.query_one(
        "INSERT INTO teams (name, description) VALUES ($1, $2) RETURNING id, name, description, created_at",
        &[&name, &description],
    )?;
    let id: i64 = row.get(0);
    tx.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1, $2)", &[&id, &creator])?;
    tx.commit()?;
    get(c, id)?.ok_or_else(|| DbError::Query { code: None, message: "team vanished after insert".into() })
}

/// Teams (with members) whose ids are in `ids`, or all teams when `ids` is `None`; by id.
fn load(c: &mut postgres::Client, ids: Option<&[i64]>, skip: i64, limit: i64) -> Result<Vec<Team>, DbError> {
    let teams = match ids {
        Some(ids) => c.query_typed(
            "SELECT id, name, description, created_at FROM teams WHERE id = ANY($1) ORDER BY id",
            &[(&ids, Type::INT8_ARRAY)],
        )?,
        None => c.query_typed(
            "SELECT id, name, description, created_at FROM teams ORDER BY id OFFSET $1 LIMIT $2",
            &[(&skip, Type::INT8), (&limit, Type::INT8)],
        )?,
    };
    let mut out: Vec<Team> = teams
        .iter()
        .map(|r| Team {
            id: r.get(0),
            name: r.get(1),
            description: r.get(2),
            created_at: r.get(3),
            members: Vec::new(),
        })
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    let team_ids: Vec<i64> = out.iter().map(|t| t.id).collect();
    let members = c.query_typed(
        "SELECT m.team_id, u.id, u.email, u.hashed_password, u.full_name, u.is_active, u.is_superuser, u.created_at \
         FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = ANY($1) ORDER BY m.joined_at, u.id",
        &[(&team_ids, Type::INT8_ARRAY)],
    )?;
    for row in &members {
        let team_id: i64 = row.get(0);
        let user = User {
            id: row.get(1),
            email: row.get(2),
            hashed_password: row.get(3),
            full_name: row.get(4),
            is_active: row.get(5),
            is_superuser: row.get(6),
            created_at: row.get(7),
        };
        if let Some(t) = out.iter_mut().find(|t| t.id == team_id) {
            t.members.push(user);
        }
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

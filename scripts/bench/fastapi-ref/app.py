"""Reference server for `scripts/bench.sh users`: the seed's stack (FastAPI under uvicorn) doing
what our `GET /users/{user_id}` does, so both are measured side by side in one run. Not shipped.

- Bearer token: HS256 JWT signed with SECRET_KEY (the same key and tokens as our server), `sub`
  the user id, `exp` checked.
- The caller (exists, active) and the user asked for are read in one query, like ours:
  `SELECT ... FROM users WHERE id = ANY($1)`, through an asyncpg pool (prepared statements cached
  per connection, like ours).
- Settings from the environment: SECRET_KEY, DB_HOST, DB_PORT, DB_USER, DB_NAME, DB_PASSWORD,
  DB_POOL_SIZE (per worker process).
Run: uvicorn app:app --workers 2 --host 127.0.0.1 --port PORT --no-access-log
"""

import os

import asyncpg
import jwt
from fastapi import FastAPI, HTTPException, Request

SECRET_KEY = os.environ["SECRET_KEY"]
COLS = "id, email, full_name, is_active, is_superuser, created_at"
QUERY = f"SELECT {COLS} FROM users WHERE id = ANY($1::bigint[])"

app = FastAPI()
pool = None


@app.on_event("startup")
async def startup():
    global pool
    pool = await asyncpg.create_pool(
        host=os.environ.get("DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DB_PORT", "5432")),
        user=os.environ.get("DB_USER", "postgres"),
        password=os.environ.get("DB_PASSWORD") or None,
        database=os.environ["DB_NAME"],
        min_size=1,
        max_size=int(os.environ.get("DB_POOL_SIZE", "8")),
    )


def unauthorized():
    return HTTPException(status_code=401, detail="Could not validate credentials", headers={"WWW-Authenticate": "Bearer"})


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/users/{user_id}")
async def read_user(user_id: int, request: Request):
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized()
    try:
        caller = int(jwt.decode(token.strip(), SECRET_KEY, algorithms=["HS256"])["sub"])
    except Exception:
        raise unauthorized()
    async with pool.acquire() as conn:
        rows = await conn.fetch(QUERY, [caller, user_id])
    if not any(r["id"] == caller and r["is_active"] for r in rows):
        raise unauthorized()
    for r in rows:
        if r["id"] == user_id:
            return {
                "id": r["id"],
                "email": r["email"],
                "full_name": r["full_name"],
                "is_active": r["is_active"],
                "is_superuser": r["is_superuser"],
                "created_at": r["created_at"].isoformat(),
            }
    raise HTTPException(status_code=404, detail="User not found")

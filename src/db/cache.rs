//! The memory cache of accounts: every user row the server has created, read or logged in since
//! start, with its password hash, so that login, `/users/me`, `/users/{id}` and bearer checks
//! keep working while PostgreSQL is away (the contract's "Degraded mode"; answers served from
//! here carry `X-Data-Stale: true`).
//!
//! Bound: at most `capacity` accounts (`ACCOUNT_CACHE_SIZE`, default 100,000); when full, the
//! least recently used one is evicted. At ~300 bytes an entry (hash, email, name, two index
//! entries) the default costs about 30 MiB at worst.
//! Lock: one `Mutex` (owned by this struct, never held across I/O or hashing; every method takes
//! it once for a few map operations).
//! Freshness: updated on every write and every read of a user row while the database is up, and
//! an account the database says is gone is dropped. Changes this process did not make (another
//! instance, SQL by hand) reach the cache with the account's next read, or at the latest with
//! the monitor's refresh of every cached account (`ACCOUNT_CACHE_REFRESH_SECS`, `reconcile`):
//! when the database leaves, the cache is at most that much older than it was.
//! Must never: hand the hash to anything but the password check, or grow past its bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::users::User;

/// The default bound (`ACCOUNT_CACHE_SIZE`).
pub const DEFAULT_CAPACITY: usize = 100_000;

struct Entry {
    user: User,
    /// Position in `Inner::order`: the higher, the more recently used.
    tick: u64,
    /// Changes whenever `user` is replaced: a refresh applies only to the version it read.
    version: u64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<i64, Entry>,
    /// Lower-cased email → id.
    by_email: HashMap<String, i64>,
    /// tick → id, oldest first: the LRU order.
    order: BTreeMap<u64, i64>,
    next_tick: u64,
    next_version: u64,
}

impl Inner {
    fn touch(&mut self, id: i64) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(e) = self.by_id.get_mut(&id) {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, id);
        }
    }

    fn remove(&mut self, id: i64) {
        if let Some(e) = self.by_id.remove(&id) {
            self.order.remove(&e.tick);
            let key = e.user.email.to_lowercase();
            if self.by_email.get(&key) == Some(&id) {
                self.by_email.remove(&key);
            }
        }
    }
}

/// The account cache (see the module doc).
pub struct AccountCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl AccountCache {
    pub fn new(capacity: usize) -> AccountCache {
        AccountCache { inner: Mutex::new(Inner::default()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember (or refresh) an account, as most recently used.
    pub fn put(&self, user: &User) {
        let mut g = self.lock();
        // The usual case, a row read again unchanged: only its place in the LRU order moves
        // (no allocation; every authenticated request puts its caller here).
        if g.by_id.get(&user.id).is_some_and(|e| e.user == *user) {
            g.touch(user.id);
            return;
        }
        // The email may have changed, or another id may have held it (a deleted account whose
        // email was reused): drop both old index entries first.
        g.remove(user.id);
        if let Some(&other) = g.by_email.get(&user.email.to_lowercase()) {
            g.remove(other);
        }
        while g.by_id.len() >= self.capacity {
            let Some((_, oldest)) = g.order.pop_first() else { break };
            g.remove(oldest);
        }
        let tick = g.next_tick;
        g.next_tick += 1;
        g.next_version += 1;
        let version = g.next_version;
        g.by_email.insert(user.email.to_lowercase(), user.id);
        g.order.insert(tick, user.id);
        g.by_id.insert(user.id, Entry { user: user.clone(), tick, version });
    }

    /// Every cached account's id and version, for a refresh ([`reconcile`](Self::reconcile)).
    pub fn versions(&self) -> Vec<(i64, u64)> {
        self.lock().by_id.iter().map(|(id, e)| (*id, e.version)).collect()
    }

    /// Apply a refresh: of the accounts `asked` (ids and the versions they had when the rows
    /// were read), those still at that version are replaced by their row in `found`, or
    /// forgotten when the database has none (deleted). One changed meanwhile by a request holds
    /// a newer row and is left alone. The LRU order does not move: a refresh is not a use.
    pub fn reconcile(&self, asked: &[(i64, u64)], found: &[User]) {
        let rows: HashMap<i64, &User> = found.iter().map(|u| (u.id, u)).collect();
        let mut g = self.lock();
        for &(id, version) in asked {
            if g.by_id.get(&id).map(|e| e.version) != Some(version) {
                continue;
            }
            match rows.get(&id) {
                None => g.remove(id),
                Some(row) if g.by_id.get(&id).is_some_and(|e| e.user == **row) => {}
                Some(row) => {
                    let old_email = g.by_id[&id].user.email.to_lowercase();
                    let new_email = row.email.to_lowercase();
                    if old_email != new_email {
                        if g.by_email.get(&old_email) == Some(&id) {
                            g.by_email.remove(&old_email);
                        }
                        if let Some(&other) = g.by_email.get(&new_email) {
                            g.remove(other);
                        }
                        g.by_email.insert(new_email, id);
                    }
                    g.next_version += 1;
                    let version = g.next_version;
                    let e = g.by_id.get_mut(&id).expect("checked above");
                    e.user = (*row).clone();
                    e.version = version;
                }
            }
        }
    }

    /// Forget an account (the database says it no longer exists).
    pub fn forget(&self, id: i64) {
        self.lock().remove(id);
    }

    pub fn by_id(&self, id: i64) -> Option<User> {
        let mut g = self.lock();
        g.touch(id);
        g.by_id.get(&id).map(|e| e.user.clone())
    }

    /// By email, case-insensitively (as the database's unique index compares them).
    pub fn by_email(&self, email: &str) -> Option<User> {
        let mut g = self.lock();
        let id = *g.by_email.get(&email.trim().to_lowercase())?;
        g.touch(id);
        g.by_id.get(&id).map(|e| e.user.clone())
    }

    /// How many accounts are held.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn user(id: i64, email: &str) -> User {
        User {
            id,
            email: email.into(),
            hashed_password: format!("hash-{id}"),
            full_name: None,
            is_active: true,
            is_superuser: false,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn finds_by_id_and_email_case_insensitively() {
        let c = AccountCache::new(10);
        c.put(&user(1, "A@x.io"));
        assert_eq!(c.by_id(1).unwrap().email, "A@x.io");
        assert_eq!(c.by_email(" a@X.IO ").unwrap().id, 1);
        assert!(c.by_email("b@x.io").is_none());
        assert!(c.by_id(2).is_none());
    }

    #[test]
    fn a_refresh_replaces_forgets_and_leaves_newer_rows_alone() {
        let c = AccountCache::new(10);
        for i in 1..=4 {
            c.put(&user(i, &format!("u{i}@x.io")));
        }
        let asked = c.versions();
        // Meanwhile a request reads 4 again, changed: a newer row than the refresh's.
        let mut newer = user(4, "u4@x.io");
        newer.full_name = Some("from a request".into());
        c.put(&newer);
        // The database now says: 1 deactivated, 2 renamed (new email), 3 gone, 4 as it was.
        let mut one = user(1, "u1@x.io");
        one.is_active = false;
        c.reconcile(&asked, &[one, user(2, "new2@x.io"), user(4, "u4@x.io")]);
        assert!(!c.by_id(1).unwrap().is_active);
        assert_eq!(c.by_email("new2@x.io").unwrap().id, 2);
        assert!(c.by_email("u2@x.io").is_none(), "the old email no longer finds it");
        assert!(c.by_id(3).is_none() && c.by_email("u3@x.io").is_none(), "deleted: forgotten");
        assert_eq!(c.by_id(4).unwrap().full_name.as_deref(), Some("from a request"), "newer kept");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn least_recently_used_is_evicted_at_the_bound() {
        let c = AccountCache::new(3);
        for i in 1..=3 {
            c.put(&user(i, &format!("u{i}@x.io")));
        }
        // Use 1, so 2 is now the oldest.
        assert!(c.by_email("u1@x.io").is_some());
        c.put(&user(4, "u4@x.io"));
        assert_eq!(c.len(), 3);
        assert!(c.by_id(2).is_none(), "2 was least recently used");
        assert!(c.by_email("u2@x.io").is_none());
        for id in [1, 3, 4] {
            assert!(c.by_id(id).is_some(), "{id}");
        }
        // Exactly at the bound, many more: never over it.
        for i in 5..1000 {
            c.put(&user(i, &format!("u{i}@x.io")));
            assert!(c.len() <= 3);
        }
    }

    /// Putting a row again unchanged is a use (it moves up the LRU order); a row that differs
    /// in any field, even only `is_active`, replaces what was held.
    #[test]
    fn an_unchanged_row_is_a_use_and_a_changed_one_replaces() {
        let c = AccountCache::new(3);
        for i in 1..=3 {
            c.put(&user(i, &format!("u{i}@x.io")));
        }
        c.put(&user(1, "u1@x.io"));
        c.put(&user(4, "u4@x.io"));
        assert!(c.by_id(1).is_some(), "1 was put again, so 2 was the oldest");
        assert!(c.by_id(2).is_none());
        let mut off = user(3, "u3@x.io");
        off.is_active = false;
        c.put(&off);
        assert!(!c.by_id(3).unwrap().is_active);
        assert!(!c.by_email("u3@x.io").unwrap().is_active);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn updates_replace_and_forget_removes() {
        let c = AccountCache::new(10);
        c.put(&user(1, "old@x.io"));
        let mut u = user(1, "new@x.io");
        u.is_active = false;
        c.put(&u);
        assert!(c.by_email("old@x.io").is_none());
        assert!(!c.by_email("new@x.io").unwrap().is_active);
        assert_eq!(c.len(), 1);
        // Another id takes the email over: the old holder goes.
        c.put(&user(2, "NEW@x.io"));
        assert!(c.by_id(1).is_none());
        assert_eq!(c.by_email("new@x.io").unwrap().id, 2);
        c.forget(2);
        assert!(c.is_empty());
        assert!(c.by_email("new@x.io").is_none());
    }
}

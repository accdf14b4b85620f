//! The hub: who is connected (the registry) and who is in which group, and the rules of the
//! contract's commands on top of them. Pure bookkeeping: a client is an `Outbox` (something that
//! takes encoded frames without blocking), so every rule here is tested with fake outboxes and
//! no sockets (`tests` below).
//!
//! One lock: `Hub::state` (a `Mutex<State>`) holds the registry *and* the group map. Every
//! operation that changes a group also changes the registry entry of the client (its current
//! group), so two locks would always be taken together; one lock has no order to get wrong.
//! Critical sections only look things up, change the maps and clone `Arc`s (plus, on connect,
//! the welcome frame goes into a not yet started outbox: memory only); a group's recipients are
//! one shared list, rebuilt on the first message after the group changes (`Group`), so a
//! message to a group clones one `Arc` however big the group. Frames are encoded and
//! pushed after the lock is dropped (`Outgoing` holds each frame's encoding as a closure over
//! `Arc`s), so a 64 KiB broadcast's JSON is never written under the lock.
//!
//! The reserved group `admins` (`protocol::ADMINS_GROUP`): only a client registered as `admin`
//! (connected with a superuser's token) may join it; others get `forbidden` and stay put.
//!
//! Several instances (`CLUSTER=postgres`): a client connected to another instance is an entry
//! like any other whose `home` is `Remote` (the one field that differs) and whose outbox takes
//! frames and drops them — its own instance delivers them. What the other instances need to
//! hear (connects, group changes, departures, messages for their clients) goes to the `Link`
//! (`crate::cluster`), which only queues in memory; what they say comes back through the
//! `remote_*` methods of `hub/remote.rs`. Without a link nothing of this runs.
//!
//! A fan-out (one frame to several clients, `push_all`) runs its pushes inside
//! `session::fan_out`, which lets the session's queues hand their writes to the kernel in one
//! batch at the end; the fakes of the tests ignore it.
//!
//! Must never: push to a started outbox or do any I/O while holding `state`; block on a slow
//! client (a full outbox evicts that client, close code 1008); let a replaced or evicted
//! session's late exit remove its successor (every entry carries a `serial`).

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::protocol::{self, ClientError, Command, Encoded, ErrorCode, GroupInfo, ServerFrame};
use crate::util::fifo::FifoGate;

mod remote;
pub use remote::{Event, Home, Link, NotSent, Origin, RemoteClient, Unreachable};

/// What happened to a frame handed to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued (or already written).
    Queued,
    /// The client's outbound queue is full: it is a slow consumer. Nothing was queued.
    Full,
    /// The client is closing or gone. Nothing was queued.
    Closed,
}

/// The sending side of one client, as the hub sees it. Implemented by the session's outbound
/// queue (`session::Outbound`) and by fakes in tests.
pub trait Outbox: Send + Sync {
    /// Queue one encoded frame. Never blocks.
    fn push(&self, frame: &Encoded) -> Pushed;
    /// Until this is called, `push` only queues in memory: the hub queues the welcome frame
    /// under its lock, before anyone else can see the client, and the session registers the
    /// client before its `101` is written. The session calls it once its socket is there.
    fn start(&self);
    /// Queue a close frame after what is queued — or, with `discard_queued`, in place of it
    /// (slow consumers) — and close the connection once it is written. Never blocks.
    fn close(&self, code: u16, reason: &str, discard_queued: bool);
}

/// A session's claim on a client id: the id and the serial of the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Arc<str>,
    pub serial: u64,
}

/// A connected client, as `GET /api/ws/clients` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub group: Option<String>,
    pub connected_at: SystemTime,
}

struct Client {
    serial: u64,
    /// Connected with a superuser's token: may be in the reserved group `admins`.
    admin: bool,
    out: Arc<dyn Outbox>,
    group: Option<Arc<str>>,
    connected_at: SystemTime,
    /// Here, or on another instance (then `out` drops what it is given).
    home: Home,
}

/// Someone to send to: id and serial (to evict the right registration) and the outbox.
#[derive(Clone)]
struct Target {
    id: Arc<str>,
    serial: u64,
    out: Arc<dyn Outbox>,
}

/// The recipients of one frame. Shared: a group's members are built once per change of the
/// group and handed to every message to it (`Group::targets`).
type Targets = Arc<[Target]>;

/// One group: its members' ids, and the same members as [`Target`]s, built on the first message
/// after a change (a join, a leave, a reconnection). So a message to a group of 1,000 costs one
/// `Arc` clone under the hub lock, not 1,000 registry lookups. The cache holds the members'
/// outboxes only while they are members: every change of `ids` goes through `State::join_group`
/// or `State::leave_group`, which drop it.
#[derive(Default)]
struct Group {
    ids: BTreeSet<Arc<str>>,
    targets: OnceCell<Targets>,
}

#[derive(Default)]
struct State {
    clients: HashMap<Arc<str>, Client>,
    /// Group name → members. A group exists while it has members.
    groups: BTreeMap<Arc<str>, Group>,
}

impl State {
    fn target(&self, id: &Arc<str>) -> Option<Target> {
        self.clients.get(id).map(|c| Target { id: id.clone(), serial: c.serial, out: c.out.clone() })
    }

    /// The members of `group` as targets (none when there is no such group).
    fn members(&self, group: &str) -> Targets {
        let Some(g) = self.groups.get(group) else {
            return Targets::default();
        };
        g.targets.get_or_init(|| g.ids.iter().filter_map(|id| self.target(id)).collect()).clone()
    }

    /// Put `id` into `group`, creating the group.
    fn join_group(&mut self, group: &Arc<str>, id: &Arc<str>) {
        let g = self.groups.entry(group.clone()).or_default();
        g.ids.insert(id.clone());
        g.targets.take();
    }

    /// Take `id` out of `group`, dropping the group when it empties.
    fn leave_group(&mut self, group: &Arc<str>, id: &str) {
        if let Some(g) = self.groups.get_mut(group) {
            g.ids.remove(id);
            g.targets.take();
            if g.ids.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// The sender, if `m` is still the current registration of its id.
    fn current(&self, m: &Member) -> Option<&Client> {
        self.clients.get(&m.id).filter(|c| c.serial == m.serial)
    }
}

/// Frames to push once the lock is dropped, each still to be encoded: the JSON of a frame is
/// written after the lock is released (`deliver`), so a 64 KiB broadcast never holds it up.
#[derive(Default)]
struct Outgoing(Vec<(Targets, Later)>);

/// A frame's encoding, deferred until the hub lock is dropped. Captures owned (`Arc`) copies.
type Later = Box<dyn FnOnce() -> Encoded + Send>;

impl Outgoing {
    fn add(&mut self, targets: impl Into<Targets>, encode: impl FnOnce() -> Encoded + Send + 'static) {
        let targets = targets.into();
        if !targets.is_empty() {
            self.0.push((targets, Box::new(encode)));
        }
    }

    fn add_encoded(&mut self, targets: Targets, frame: Encoded) {
        self.add(targets, move || frame);
    }
}

/// The registry and the groups. Shared by every session thread and the HTTP handlers.
pub struct Hub {
    state: Mutex<State>,
    next_serial: AtomicU64,
    /// Counters for `/metrics` (relaxed atomics, never a lock).
    pub stats: HubStats,
    /// The other instances (`CLUSTER=postgres`), set once at start; `None` for a single instance.
    link: std::sync::OnceLock<Arc<dyn Link>>,
    /// Fan-outs that write at once: as many as the process may use cores. A fan-out (a frame
    /// for more than one client, from `push_all`, or a reader's deferred writes) takes a permit
    /// for its whole loop; when none is free it waits its turn, first come first served (at
    /// most one waiter per thread that fans out: session readers, HTTP handlers, the cluster
    /// listener). Without it, eight fan-outs in flight were eight runnable threads sharing the
    /// process's CPU time slice by slice, each finishing only when all did; see
    /// `docs/decisions.md`, "Fan-outs take turns".
    writers: FifoGate,
}

/// What the hub has done since start, for `/metrics`.
#[derive(Default)]
pub struct HubStats {
    /// Frames queued to clients by `deliver` (one per recipient). Counted once the pushes have
    /// returned, so a client can hold a frame a moment before it shows here.
    pub delivered: AtomicU64,
    /// Clients closed with 1008 because their outbound queue was full.
    pub slow_consumer_closes: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

/// The id the server assigns to `/ws`: `anon-` and 8 hex digits.
fn anon_id() -> String {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness (never seen on Linux): fall back to the clock; uniqueness is still
        // checked against the registry.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        b = nanos.to_le_bytes();
    }
    format!("anon-{:08x}", u32::from_be_bytes(b))
}

impl Hub {
    pub fn new() -> Hub {
        Hub::with_writers(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A hub whose fan-outs write `writers` at a time (`Hub::writers`).
    fn with_writers(writers: usize) -> Hub {
        Hub {
            state: Mutex::new(State::default()),
            next_serial: AtomicU64::new(1),
            stats: HubStats::default(),
            link: std::sync::OnceLock::new(),
            writers: FifoGate::new(writers),
        }
    }

    /// The fan-out gate (see `Hub::writers`), for a session's deferred writes.
    pub fn writers(&self) -> &FifoGate {
        &self.writers
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the maps consistent before anything can panic (map
        // operations and Arc clones), so a poisoned lock still holds good data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected clients.
    pub fn len(&self) -> usize {
        self.lock().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register a client: with its requested id (taking it over from an older connection,
    /// which is closed with 4000 `replaced`) or a fresh `anon-` id, and in `group` if given.
    /// The client gets `welcome` first (queued in `out`, which the caller starts); the other
    /// members of its group get `join`. `admin`: the client may be in the reserved group
    /// `admins` (the caller checks that a client connecting into it is one).
    pub fn connect(
        &self,
        requested_id: Option<&str>,
        group: Option<&str>,
        admin: bool,
        out: Arc<dyn Outbox>,
    ) -> Member {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let group: Option<Arc<str>> = group.map(Arc::from);
        let mut outgoing = Outgoing::default();
        let mut st = self.lock();
        let id: Arc<str> = match requested_id {
            Some(id) => Arc::from(id),
            None => loop {
                let id = anon_id();
                if !st.clients.contains_key(id.as_str()) {
                    break Arc::from(id);
                }
            },
        };
        let old = st.clients.remove(&id);
        if let Some(old_group) = old.as_ref().and_then(|o| o.group.clone()) {
            st.leave_group(&old_group, &id);
            // Moving to another group (or none) is a leave for the old group; staying in the same
            // group is not (its members get a `join` for the new connection below).
            if group.as_ref() != Some(&old_group) {
                let (id, g) = (id.clone(), old_group.clone());
                outgoing.add(st.members(&old_group), move || ServerFrame::Leave { client_id: &id, group: &g }.encode());
            }
        }
        // Not started yet: this only queues, so the welcome is the client's first frame.
        out.push(&ServerFrame::Welcome { client_id: &id, group: group.as_deref() }.encode());
        let connected_at = SystemTime::now();
        st.clients.insert(
            id.clone(),
            Client { serial, admin, out: out.clone(), group: group.clone(), connected_at, home: Home::Local },
        );
        if let Some(g) = &group {
            let others = st.members(g);
            st.join_group(g, &id);
            let (id, g) = (id.clone(), g.clone());
            outgoing.add(others, move || ServerFrame::Join { client_id: &id, group: &g }.encode());
        }
        // Under the lock, so the other instances hear registrations in the order they happened.
        self.publish_state(Event::Connected { id: &id, serial, group: group.as_deref(), connected_at });
        drop(st);
        if let Some(old) = old {
            old.out.close(4000, "replaced", false);
        }
        self.deliver(outgoing);
        Member { id, serial }
    }

    /// Remove a client that has left (close frame, dropped connection, ping timeout). Its group's
    /// remaining members get `leave`. Returns false when `m` was no longer registered (replaced
    /// or evicted): then nothing happens.
    pub fn disconnect(&self, m: &Member) -> bool {
        let mut outgoing = Outgoing::default();
        let removed = self.remove(m, &mut outgoing);
        self.deliver(outgoing);
        removed
    }

    /// Take `m` out of the registry and its group, adding the `leave` notices to `outgoing`.
    fn remove(&self, m: &Member, outgoing: &mut Outgoing) -> bool {
        let mut st = self.lock();
        if st.current(m).is_none() {
            return false;
        }
        let client = st.clients.remove(&m.id).expect("checked above");
        if client.home == Home::Local {
            self.publish_state(Event::Gone { id: &m.id, serial: m.serial });
        }
        if let Some(g) = client.group {
            st.leave_group(&g, &m.id);
            let id = m.id.clone();
            outgoing.add(st.members(&g), move || ServerFrame::Leave { client_id: &id, group: &g }.encode());
        }
        true
    }

    /// Encode each frame (no lock held) and push it to its targets; evict the targets whose
    /// queue is full. Returns how many targets of the first batch got their frame queued, and
    /// the frames that went to more than one client other than `sender` (its fan-out, see
    /// `handle`; one recipient is no amplification: its own queue bounds it).
    fn deliver_from(&self, outgoing: Outgoing, sender: Option<&Member>) -> (usize, Vec<Encoded>) {
        let mut slow = Vec::new();
        let mut first = None;
        let mut fanout = Vec::new();
        let mut total = 0;
        for (targets, encode) in outgoing.0 {
            let frame = encode();
            let queued = push_all(&self.writers, &targets, &frame, &mut slow);
            first.get_or_insert(queued);
            total += queued;
            if let Some(me) = sender {
                if targets.iter().filter(|t| t.id != me.id).nth(1).is_some() {
                    fanout.push(frame);
                }
            }
        }
        self.stats.delivered.fetch_add(total as u64, Ordering::Relaxed);
        self.evict(slow);
        (first.unwrap_or(0), fanout)
    }

    fn deliver(&self, outgoing: Outgoing) -> usize {
        self.deliver_from(outgoing, None).0
    }

    /// Slow consumers: out of the registry, close 1008 in place of their queue, `leave` to their
    /// group — whose members may turn out slow in turn, hence the work list (no recursion).
    fn evict(&self, mut slow: Vec<Target>) {
        while let Some(t) = slow.pop() {
            let mut outgoing = Outgoing::default();
            let m = Member { id: t.id.clone(), serial: t.serial };
            // Counted once per client: a client can be listed by several full pushes (each
            // `leave` of a cascade, fan-outs on other threads), and only the first removes it.
            if self.remove(&m, &mut outgoing) {
                self.stats.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                crate::info!("ws client {} is not reading: outbound queue full, disconnecting (1008)", t.id);
            }
            t.out.close(1008, "slow consumer: outbound queue full", true);
            for (targets, encode) in outgoing.0 {
                push_all(&self.writers, &targets, &encode(), &mut slow);
            }
        }
    }

    /// Send an error frame to one client (the sender of a bad frame).
    pub fn send_error(&self, member: &Member, out: Arc<dyn Outbox>, err: &ClientError) {
        self.push_own(member, out, &ServerFrame::Error { code: err.code, message: &err.message }.encode());
    }

    /// A frame for one client from its own session (a pong, a ping, an error reply). A client
    /// that keeps sending but never reads fills its queue this way too: it is then a slow
    /// consumer like any other, evicted with 1008, instead of holding its session forever.
    pub fn push_own(&self, member: &Member, out: Arc<dyn Outbox>, frame: &Encoded) {
        if out.push(frame) == Pushed::Full {
            self.evict(vec![Target { id: member.id.clone(), serial: member.serial, out }]);
        }
    }

    /// Run one client command for `m`. Replies, notices and errors go out as the contract says.
    /// Returns the frames that went to other clients (the command's fan-out): the session
    /// holds on to them to pace its reading by how much of them is still queued.
    pub fn handle(&self, m: &Member, cmd: Command) -> Vec<Encoded> {
        let mut outgoing = Outgoing::default();
        let mut st = self.lock();
        let Some(me) = st.current(m) else {
            // A replaced or evicted session still draining its socket: it speaks for nobody.
            return Vec::new();
        };
        let me_target: Targets = Arc::new([Target { id: m.id.clone(), serial: m.serial, out: me.out.clone() }]);
        let my_group = me.group.clone();
        let admin = me.admin;
        let error = |outgoing: &mut Outgoing, code: ErrorCode, message: String| {
            outgoing.add(me_target.clone(), move || ServerFrame::Error { code, message: &message }.encode());
        };
        let from = m.id.clone();
        // What the other instances must deliver, once the lock is dropped.
        let mut relay: Option<(remote::Relay, remote::Spread)> = None;
        match cmd {
            Command::SendTo { to, message } => match st.target(&Arc::from(to.as_str())) {
                None => error(&mut outgoing, ErrorCode::ClientNotFound, format!("client {to} is not connected")),
                Some(target) => match st.home_of(&target.id) {
                    Some(instance) => {
                        relay = Some((remote::Relay::Private { to, message }, remote::Spread::one(instance)))
                    }
                    None => {
                        let (to, message): (Arc<str>, Arc<str>) = (Arc::from(to), Arc::from(message));
                        let (t, msg) = (to.clone(), message.clone());
                        outgoing.add(vec![target], move || {
                            ServerFrame::Private { from: &from, to: &t, message: &msg }.encode()
                        });
                        outgoing
                            .add(me_target.clone(), move || ServerFrame::Sent { to: &to, message: &message }.encode());
                    }
                },
            },
            Command::Group { message } | Command::Text { message } if my_group.is_some() => {
                let g = my_group.clone().expect("checked");
                let members = st.members(&g);
                relay = self
                    .spread_group(&st, &g)
                    .map(|s| (remote::Relay::Group { group: g.clone(), message: message.clone() }, s));
                outgoing.add(members, move || ServerFrame::Group { from: &from, group: &g, message: &message }.encode())
            }
            Command::Group { .. } => {
                error(&mut outgoing, ErrorCode::NotInGroup, "you are not in a group: /join <group> first".into())
            }
            Command::Text { message } => {
                let everyone: Vec<Target> = st.clients.keys().filter_map(|id| st.target(id)).collect();
                relay = self.spread_all(&st).map(|s| (remote::Relay::Broadcast { message: message.clone() }, s));
                outgoing.add(everyone, move || ServerFrame::Broadcast { from: &from, message: &message }.encode());
            }
            Command::Join { group } if group == protocol::ADMINS_GROUP && !admin => error(
                &mut outgoing,
                ErrorCode::Forbidden,
                format!("the group {group} is reserved for superusers: connect with a superuser's token"),
            ),
            Command::Join { group } => {
                let group: Arc<str> = Arc::from(group.as_str());
                if my_group.as_ref() != Some(&group) {
                    if let Some(old) = &my_group {
                        st.leave_group(old, &m.id);
                        let (id, old) = (m.id.clone(), old.clone());
                        outgoing
                            .add(st.members(&old), move || ServerFrame::Leave { client_id: &id, group: &old }.encode());
                    }
                    let others = st.members(&group);
                    st.join_group(&group, &m.id);
                    if let Some(c) = st.clients.get_mut(&m.id) {
                        c.group = Some(group.clone());
                    }
                    let (id, g) = (m.id.clone(), group.clone());
                    outgoing.add(others, move || ServerFrame::Join { client_id: &id, group: &g }.encode());
                    self.publish_state(Event::Moved { id: &m.id, serial: m.serial, group: Some(&group) });
                }
                outgoing.add(me_target.clone(), move || ServerFrame::Joined { group: &group }.encode());
            }
            Command::Leave => match my_group {
                None => error(&mut outgoing, ErrorCode::NotInGroup, "you are not in a group".into()),
                Some(g) => {
                    st.leave_group(&g, &m.id);
                    if let Some(c) = st.clients.get_mut(&m.id) {
                        c.group = None;
                    }
                    self.publish_state(Event::Moved { id: &m.id, serial: m.serial, group: None });
                    let (id, g2) = (m.id.clone(), g.clone());
                    outgoing.add(st.members(&g), move || ServerFrame::Leave { client_id: &id, group: &g2 }.encode());
                    outgoing.add(me_target.clone(), move || ServerFrame::Left { group: &g }.encode());
                }
            },
            Command::Groups => {
                let groups = group_infos(&st);
                outgoing.add(me_target.clone(), move || ServerFrame::Groups { groups: &groups }.encode());
            }
            Command::Members { group } => {
                let group: Option<Arc<str>> = group.map(|g| Arc::from(g.as_str())).or(my_group);
                match group {
                    None => error(
                        &mut outgoing,
                        ErrorCode::NotInGroup,
                        "you are not in a group: name one, /members <group>".into(),
                    ),
                    Some(g) => {
                        let members: Vec<Arc<str>> =
                            st.groups.get(&g).map(|s| s.ids.iter().cloned().collect()).unwrap_or_default();
                        outgoing.add(me_target.clone(), move || {
                            ServerFrame::Members { group: &g, members: &members }.encode()
                        });
                    }
                }
            }
        }
        drop(st);
        if let Some((relay, spread)) = relay {
            self.relay_for(m, me_target, relay, &spread, &mut outgoing);
        }
        self.deliver_from(outgoing, Some(m)).1
    }

    /// `POST /api/ws/send_to/{id}`: a `private` frame from `server`. `NotConnected` when the
    /// client is not connected (or was just evicted as a slow consumer), `Unreachable` when it is
    /// on another instance that cannot be reached now.
    pub fn send_from_server(&self, to: &str, message: &str) -> Result<(), NotSent> {
        let (target, home) = {
            let st = self.lock();
            let target = st.target(&Arc::from(to)).ok_or(NotSent::NotConnected)?;
            let home = st.home_of(&target.id);
            (target, home)
        };
        if let Some(instance) = home {
            let link = self.link.get().ok_or(NotSent::NotConnected)?;
            if !link.reachable(&instance) {
                let why = format!("instance {instance} cannot be reached now");
                return Err(NotSent::Unreachable(Unreachable(why)));
            }
            let ev = Event::Private { from: "server", to, instance: &instance, message };
            return link.publish(ev).map_err(NotSent::Unreachable);
        }
        let mut outgoing = Outgoing::default();
        let (to, message): (Arc<str>, Arc<str>) = (Arc::from(to), Arc::from(message));
        outgoing
            .add(vec![target], move || ServerFrame::Private { from: "server", to: &to, message: &message }.encode());
        if self.deliver(outgoing) == 1 {
            Ok(())
        } else {
            Err(NotSent::NotConnected)
        }
    }

    /// `POST /api/ws/broadcast_to_group/{group}`: a `group` frame from `server` to every member.
    /// `None` when there is no such group; otherwise how many members got it queued.
    pub fn group_from_server(&self, group: &str, message: &str) -> Option<usize> {
        let (targets, spread) = {
            let st = self.lock();
            if !st.groups.contains_key(group) {
                return None;
            }
            (st.members(group), self.spread_group(&st, group))
        };
        // Members elsewhere count as queued here (their outbox takes anything); the ones whose
        // instance cannot be reached are taken back.
        let missed = spread.map_or(0, |s| {
            let to = s.instances();
            self.relay(Event::Group { from: "server", group, message, to: &to }, &s)
        });
        let mut outgoing = Outgoing::default();
        let (group, message): (Arc<str>, Arc<str>) = (Arc::from(group), Arc::from(message));
        outgoing.add(targets, move || ServerFrame::Group { from: "server", group: &group, message: &message }.encode());
        Some(self.deliver(outgoing).saturating_sub(missed))
    }

    /// Push an already encoded frame to every member of `group` (server notices such as
    /// database alerts to `admins`). Returns how many got it queued.
    pub fn send_to_group(&self, group: &str, frame: &Encoded) -> usize {
        let targets = self.lock().members(group);
        let mut outgoing = Outgoing::default();
        outgoing.add_encoded(targets, frame.clone());
        self.deliver(outgoing)
    }

    /// Every connected client, oldest first.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let st = self.lock();
        let mut list: Vec<ClientInfo> = st
            .clients
            .iter()
            .map(|(id, c)| ClientInfo {
                client_id: id.to_string(),
                group: c.group.as_deref().map(str::to_string),
                connected_at: c.connected_at,
            })
            .collect();
        drop(st);
        list.sort_by(|a, b| a.connected_at.cmp(&b.connected_at).then_with(|| a.client_id.cmp(&b.client_id)));
        list
    }

    /// Every group with its size, by name.
    pub fn groups(&self) -> Vec<GroupInfo> {
        group_infos(&self.lock())
    }

    /// The members of `group`, by id; `None` when there is no such group.
    pub fn members(&self, group: &str) -> Option<Vec<String>> {
        self.lock().groups.get(group).map(|s| s.ids.iter().map(|id| id.to_string()).collect())
    }

    /// Server shutdown: empty the registry and close every client with 1001 (no `leave`
    /// notices: everyone is going). Returns how many were closed.
    pub fn shutdown(&self) -> usize {
        let clients = {
            let mut st = self.lock();
            st.groups.clear();
            std::mem::take(&mut st.clients)
        };
        for c in clients.values() {
            c.out.close(1001, "server shutting down", false);
        }
        clients.len()
    }
}

fn group_infos(st: &State) -> Vec<GroupInfo> {
    st.groups.iter().map(|(name, set)| GroupInfo { name: name.to_string(), member_count: set.ids.len() }).collect()
}

/// Push `frame` to every target; the ones that are full go to `slow`. Returns how many queued.
/// A fan-out (more than one target) waits for its turn at `writers` first.
fn push_all(writers: &FifoGate, targets: &[Target], frame: &Encoded, slow: &mut Vec<Target>) -> usize {
    let mut push_each = || {
        let mut queued = 0;
        for (i, t) in targets.iter().enumerate() {
            // Each push begins with a cache miss on the member's queue (its lock): ask for the
            // next member's queue now, so that it is there by then.
            if let Some(next) = targets.get(i + 1) {
                prefetch(Arc::as_ptr(&next.out).cast::<u8>());
            }
            match t.out.push(frame) {
                Pushed::Queued => queued += 1,
                Pushed::Full => slow.push(t.clone()),
                Pushed::Closed => {}
            }
        }
        queued
    };
    if targets.len() < 2 {
        return push_each();
    }
    let _turn = writers.enter();
    // The session's queues write the frame to every member whose queue was empty together, at
    // the end (one io_uring submission); for fakes in tests this is the plain loop.
    super::session::fan_out(frame, targets.len(), push_each)
}

/// A hint to the CPU that `p` will be read soon (no effect on what the program does).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // The lock and the state beside it may straddle a line boundary: ask for two lines.
        // SAFETY: SSE is part of x86_64's baseline, and a prefetch never faults, whatever the
        // address: it reads nothing the program sees.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests_support {
    pub(super) use super::tests::{connect, run};
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::protocol::{decode_frame, parse_client_text};
    use serde_json::Value;

    /// An outbox that records what it is given. `capacity` frames at most (then `Full`).
    pub(crate) struct Fake {
        frames: Mutex<Vec<Value>>,
        closed: Mutex<Option<(u16, String, bool)>>,
        capacity: usize,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Fake::with_capacity(usize::MAX)
        }
        fn with_capacity(capacity: usize) -> Arc<Fake> {
            Arc::new(Fake { frames: Mutex::default(), closed: Mutex::default(), capacity })
        }
        /// Take the frames received so far.
        pub(crate) fn take(&self) -> Vec<Value> {
            std::mem::take(&mut *self.frames.lock().unwrap())
        }
        pub(crate) fn types(&self) -> Vec<String> {
            self.take().iter().map(|v| v["type"].as_str().unwrap().to_string()).collect()
        }
        pub(crate) fn closed(&self) -> Option<(u16, String, bool)> {
            self.closed.lock().unwrap().clone()
        }
    }

    impl Outbox for Fake {
        fn push(&self, frame: &Encoded) -> Pushed {
            if self.closed.lock().unwrap().is_some() {
                return Pushed::Closed;
            }
            let mut frames = self.frames.lock().unwrap();
            if frames.len() >= self.capacity {
                return Pushed::Full;
            }
            let (op, payload) = decode_frame(frame).unwrap();
            assert_eq!(op, 1);
            frames.push(serde_json::from_slice(&payload).unwrap());
            Pushed::Queued
        }
        fn start(&self) {}
        fn close(&self, code: u16, reason: &str, discard_queued: bool) {
            self.closed.lock().unwrap().get_or_insert((code, reason.to_string(), discard_queued));
        }
    }

    pub(crate) fn connect(hub: &Hub, id: Option<&str>, group: Option<&str>) -> (Member, Arc<Fake>) {
        let out = Fake::new();
        let m = hub.connect(id, group, false, out.clone());
        (m, out)
    }

    pub(crate) fn run(hub: &Hub, m: &Member, text: &str) {
        hub.handle(m, parse_client_text(text).unwrap());
    }

    #[test]
    fn connect_welcomes_and_announces() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("alice"), Some("g"));
        let w = out_a.take();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0]["type"].as_str(), w[0]["client_id"].as_str(), w[0]["group"].as_str()),
            (Some("welcome"), Some("alice"), Some("g"))
        );
        let (_, out_b) = connect(&hub, Some("bob"), Some("g"));
        assert_eq!(out_b.types(), ["welcome"]);
        let j = out_a.take();
        assert_eq!((j[0]["type"].as_str(), j[0]["client_id"].as_str()), (Some("join"), Some("bob")));
        let (anon, out_c) = connect(&hub, None, None);
        assert!(anon.id.starts_with("anon-") && anon.id.len() == 13, "{}", anon.id);
        let w = out_c.take();
        assert_eq!(w[0]["group"], Value::Null);
        assert!(out_a.take().is_empty(), "no join for a client without a group");
        assert_eq!(hub.len(), 3);
        assert_eq!(hub.members("g").unwrap(), ["alice", "bob"]);
        assert!(hub.disconnect(&a));
        assert_eq!(hub.members("g").unwrap(), ["bob"]);
    }

    #[test]
    fn private_messages_and_errors() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("a"), None);
        let (_, out_b) = connect(&hub, Some("b"), None);
        out_a.take();
        out_b.take();
        run(&hub, &a, "/send_to b hello there");
        let p = out_b.take();
        assert_eq!(
            (p[0]["type"].as_str(), p[0]["from"].as_str(), p[0]["to"].as_str(), p[0]["message"].as_str()),
            (Some("private"), Some("a"), Some("b"), Some("hello there"))
        );
        let s = out_a.take();
        assert_eq!((s[0]["type"].as_str(), s[0]["to"].as_str()), (Some("sent"), Some("b")));
        run(&hub, &a, "/send_to nobody hi");
        let e = out_a.take();
        assert_eq!((e[0]["type"].as_str(), e[0]["error"].as_str()), (Some("error"), Some("client_not_found")));
        run(&hub, &a, "/group hi");
        assert_eq!(out_a.take()[0]["error"], "not_in_group");
        run(&hub, &a, "/leave");
        assert_eq!(out_a.take()[0]["error"], "not_in_group");
        run(&hub, &a, "/members");
        assert_eq!(out_a.take()[0]["error"], "not_in_group");
        assert!(out_b.take().is_empty());
    }

    /// A group's targets are built once and reused: every change of the group must show in the
    /// next message (a join, a leave, a move, a disconnect, a reconnection under the same id).
    #[test]
    fn group_messages_reach_exactly_the_current_members() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("a"), Some("g"));
        let (b, out_b) = connect(&hub, Some("b"), Some("g"));
        let heard = |outs: &[&Arc<Fake>]| -> Vec<usize> {
            outs.iter().map(|o| o.take().iter().filter(|f| f["type"] == "group").count()).collect()
        };
        run(&hub, &a, "/group one");
        assert_eq!(heard(&[&out_a, &out_b]), [1, 1]);
        let (c, out_c) = connect(&hub, Some("c"), None);
        run(&hub, &c, "/join g");
        run(&hub, &a, "/group two");
        assert_eq!(heard(&[&out_a, &out_b, &out_c]), [1, 1, 1], "a joiner hears the next message");
        run(&hub, &b, "/leave");
        run(&hub, &a, "/group three");
        assert_eq!(heard(&[&out_a, &out_b, &out_c]), [1, 0, 1], "one who left does not");
        run(&hub, &c, "/join h");
        run(&hub, &a, "/group four");
        assert_eq!(heard(&[&out_a, &out_c]), [1, 0], "nor one who moved");
        let (a2, out_a2) = connect(&hub, Some("a"), Some("g"));
        let (d, out_d) = connect(&hub, Some("d"), Some("g"));
        run(&hub, &a2, "/group five");
        assert_eq!(heard(&[&out_a, &out_a2, &out_d]), [0, 1, 1], "the replaced connection does not");
        assert!(hub.disconnect(&a2));
        run(&hub, &d, "/group six");
        assert_eq!(heard(&[&out_a2, &out_d]), [0, 1], "nor one who disconnected");
        assert_eq!(hub.members("g").unwrap(), ["d"]);
    }

    /// An outbox whose pushes, once `armed`, wait until `open`: a recipient that makes the
    /// fan-out writing to it take as long as the test wants. Counts the pushes that got in.
    #[derive(Default)]
    struct Stall {
        armed: std::sync::atomic::AtomicBool,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        inside: std::sync::atomic::AtomicUsize,
    }

    impl Outbox for Stall {
        fn push(&self, _: &Encoded) -> Pushed {
            if self.armed.load(Ordering::SeqCst) {
                self.inside.fetch_add(1, Ordering::SeqCst);
                let mut open = self.open.lock().unwrap();
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
            }
            Pushed::Queued
        }
        fn start(&self) {}
        fn close(&self, _: u16, _: &str, _: bool) {}
    }

    /// One fan-out writes at a time here: while the first is held up by a slow recipient, the
    /// next two wait at the gate instead of writing beside it, and go in the order they came.
    #[test]
    fn fanouts_take_turns_in_arrival_order() {
        use crate::util::within;
        let hub = Arc::new(Hub::with_writers(1));
        let stall = Arc::new(Stall::default());
        // First in the group's order (ids are sorted), so every fan-out meets it first.
        hub.connect(Some("0-stall"), Some("g"), false, stall.clone());
        let members: Vec<(Member, Arc<Fake>)> =
            ["a", "b", "c"].iter().map(|id| connect(&hub, Some(id), Some("g"))).collect();
        for (_, out) in &members {
            out.take();
        }
        stall.armed.store(true, Ordering::SeqCst);
        let send = |i: usize, text: &'static str| {
            let (hub, m) = (hub.clone(), members[i].0.clone());
            std::thread::spawn(move || run(&hub, &m, text))
        };
        let first = send(0, "/group one");
        within("the first fan-out did not reach the slow recipient", || stall.inside.load(Ordering::SeqCst) == 1);
        let second = send(1, "/group two");
        within("the second fan-out did not wait for the first", || hub.writers().waiting() == 1);
        let third = send(2, "/group three");
        within("the third fan-out did not wait in line", || hub.writers().waiting() == 2);
        assert_eq!(stall.inside.load(Ordering::SeqCst), 1, "only the first fan-out is writing");
        *stall.open.lock().unwrap() = true;
        stall.opened.notify_all();
        for t in [first, second, third] {
            t.join().unwrap();
        }
        assert_eq!(stall.inside.load(Ordering::SeqCst), 3);
        for (m, out) in &members {
            let got: Vec<String> = out.take().iter().map(|f| f["message"].as_str().unwrap().to_string()).collect();
            assert_eq!(got, ["one", "two", "three"], "as {} received them", m.id);
        }
        assert_eq!(hub.writers().free(), 1);
    }

    #[test]
    fn groups_fan_out_and_vanish() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("a"), Some("g"));
        let (b, out_b) = connect(&hub, Some("b"), Some("g"));
        let (c, out_c) = connect(&hub, Some("c"), Some("h"));
        for o in [&out_a, &out_b, &out_c] {
            o.take();
        }
        run(&hub, &a, "/group hi all");
        for o in [&out_a, &out_b] {
            let g = o.take();
            assert_eq!(
                (g[0]["type"].as_str(), g[0]["from"].as_str(), g[0]["group"].as_str(), g[0]["message"].as_str()),
                (Some("group"), Some("a"), Some("g"), Some("hi all"))
            );
        }
        assert!(out_c.take().is_empty());
        // Plain text in a group is a group message.
        run(&hub, &b, "plain");
        assert_eq!(out_a.take()[0]["type"], "group");
        assert_eq!(out_b.take()[0]["type"], "group");

        // c moves into g: h vanishes, g hears a join, c gets joined.
        run(&hub, &c, "/join g");
        assert_eq!(out_c.types(), ["joined"]);
        assert_eq!(out_a.types(), ["join"]);
        assert_eq!(out_b.types(), ["join"]);
        assert_eq!(hub.groups(), vec![GroupInfo { name: "g".into(), member_count: 3 }]);
        // Joining the group one is in changes nothing but answers joined.
        run(&hub, &c, "/join g");
        assert_eq!(out_c.types(), ["joined"]);
        assert!(out_a.take().is_empty());

        run(&hub, &a, "/members");
        let m = out_a.take();
        assert_eq!(m[0]["members"], serde_json::json!(["a", "b", "c"]));
        run(&hub, &a, "/members nothing-here");
        let m = out_a.take();
        assert_eq!((m[0]["group"].as_str(), m[0]["members"].clone()), (Some("nothing-here"), serde_json::json!([])));

        run(&hub, &a, "/leave");
        let l = out_a.take();
        assert_eq!((l[0]["type"].as_str(), l[0]["group"].as_str()), (Some("left"), Some("g")));
        let l = out_b.take();
        assert_eq!((l[0]["type"].as_str(), l[0]["client_id"].as_str()), (Some("leave"), Some("a")));
        assert_eq!(out_c.types(), ["leave"]);
        // Without a group, plain text is a broadcast to everyone, the sender included.
        run(&hub, &a, "to everyone");
        for o in [&out_a, &out_b, &out_c] {
            let v = o.take();
            assert_eq!((v[0]["type"].as_str(), v[0]["from"].as_str()), (Some("broadcast"), Some("a")));
        }
        run(&hub, &a, "/groups");
        assert_eq!(out_a.take()[0]["groups"], serde_json::json!([{"name": "g", "member_count": 2}]));

        hub.disconnect(&b);
        hub.disconnect(&c);
        assert!(hub.groups().is_empty(), "a group exists while it has members");
        assert_eq!(hub.members("g"), None);
    }

    #[test]
    fn takeover_closes_the_old_connection_and_its_exit_changes_nothing() {
        let hub = Hub::new();
        let (_, out_w) = connect(&hub, Some("watcher"), Some("g"));
        let (old, out_old) = connect(&hub, Some("x"), Some("g"));
        out_w.take();
        let (new, out_new) = connect(&hub, Some("x"), Some("g"));
        assert_eq!(out_old.closed(), Some((4000, "replaced".into(), false)));
        assert_eq!(out_new.types(), ["welcome"]);
        // Same group: no leave for the id, a join for the new connection.
        assert_eq!(out_w.types(), ["join"]);
        // The old session's reader exits late: nothing happens to the new one.
        assert!(!hub.disconnect(&old));
        hub.handle(&old, Command::Group { message: "ghost".into() });
        assert!(out_w.take().is_empty());
        assert_eq!(hub.members("g").unwrap(), ["watcher", "x"]);
        // Takeover into another group is a leave for the old group.
        let (_, _out_newer) = connect(&hub, Some("x"), None);
        assert_eq!(out_new.closed().unwrap().0, 4000);
        let l = out_w.take();
        assert_eq!((l[0]["type"].as_str(), l[0]["client_id"].as_str()), (Some("leave"), Some("x")));
        assert_eq!(hub.len(), 2);
        assert!(!hub.disconnect(&new));
    }

    #[test]
    fn a_full_queue_evicts_only_that_client() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("a"), Some("g"));
        let slow = Fake::with_capacity(3);
        let s = hub.connect(Some("slow"), Some("g"), false, slow.clone());
        let (_, out_c) = connect(&hub, Some("c"), Some("g"));
        for _ in 0..5 {
            run(&hub, &a, "/group flood");
        }
        assert_eq!(slow.closed(), Some((1008, "slow consumer: outbound queue full".into(), true)));
        assert!(!hub.disconnect(&s), "already removed");
        assert_eq!(hub.members("g").unwrap(), ["a", "c"]);
        let types = out_c.types();
        assert_eq!(types.iter().filter(|t| *t == "group").count(), 5);
        assert_eq!(types.iter().filter(|t| *t == "leave").count(), 1);
        // A private message to the evicted client is now client_not_found.
        out_a.take();
        run(&hub, &a, "/send_to slow hi");
        assert_eq!(out_a.take()[0]["error"], "client_not_found");
        assert_eq!(hub.send_from_server("slow", "x"), Err(NotSent::NotConnected));
    }

    /// `n` clients `s0`, `s1`, ... of group `g`, each an outbox with room for `capacity` frames
    /// (its welcome and the `join` of every later one included).
    fn slow_members(hub: &Hub, n: usize, capacity: usize) -> Vec<Arc<Fake>> {
        let slows: Vec<Arc<Fake>> = (0..n).map(|_| Fake::with_capacity(capacity)).collect();
        for (i, f) in slows.iter().enumerate() {
            hub.connect(Some(&format!("s{i}")), Some("g"), false, f.clone());
        }
        slows
    }

    /// Whether every one of `slows` was closed as a slow consumer.
    fn all_closed_1008(slows: &[Arc<Fake>]) -> bool {
        slows.iter().all(|f| f.closed().map(|c| c.0) == Some(1008))
    }

    #[test]
    fn evictions_cascade_without_recursion() {
        let hub = Hub::new();
        let (a, _out_a) = connect(&hub, Some("a"), Some("g"));
        // Each slow client has room for its welcome and the join notices of the later ones only.
        let slows = slow_members(&hub, 50, 60);
        for _ in 0..70 {
            run(&hub, &a, "/group x");
        }
        assert!(all_closed_1008(&slows));
        assert_eq!(hub.members("g").unwrap(), ["a"]);
        assert_eq!(hub.stats.slow_consumer_closes.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn a_slow_consumer_is_counted_once_however_many_full_pushes_list_it() {
        // Ten clients that fill up at the same message: each eviction's `leave` finds the rest
        // full again and lists them again (a probe saw the counter far above the clients closed).
        let hub = Hub::new();
        let (a, _out_a) = connect(&hub, Some("a"), Some("g"));
        let slows = slow_members(&hub, 10, 5);
        for f in &slows {
            f.take();
        }
        for _ in 0..6 {
            run(&hub, &a, "/group x");
        }
        assert!(all_closed_1008(&slows));
        assert_eq!(hub.stats.slow_consumer_closes.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn admins_is_reserved_and_the_fanout_is_reported() {
        let hub = Hub::new();
        let (a, out_a) = connect(&hub, Some("a"), Some("g"));
        let boss = Fake::new();
        let b = hub.connect(Some("boss"), None, true, boss.clone());
        out_a.take();
        boss.take();
        run(&hub, &a, "/join admins");
        let e = out_a.take();
        assert_eq!((e[0]["type"].as_str(), e[0]["error"].as_str()), (Some("error"), Some("forbidden")));
        assert_eq!(hub.members("g").unwrap(), ["a"], "the client stays where it was");
        assert_eq!(hub.members("admins"), None);
        run(&hub, &b, "/join admins");
        assert_eq!(boss.types(), ["joined"]);
        assert_eq!(hub.send_to_group("admins", &crate::ws::protocol::encode_text("{}".into())), 1);
        // What went to several others comes back to the session (its fan-out); one recipient
        // is no amplification, and its own echo does not count.
        let fan = hub.handle(&b, parse_client_text("/send_to a hi").unwrap());
        assert!(fan.is_empty(), "a private message has one recipient");
        let fan = hub.handle(&a, parse_client_text("/group alone").unwrap());
        assert!(fan.is_empty(), "alone in its group: only its own copy");
        let fan = hub.handle(&a, parse_client_text("/leave").unwrap());
        assert!(fan.is_empty());
        let fan = hub.handle(&a, parse_client_text("to everyone").unwrap());
        assert!(fan.is_empty(), "a broadcast reaching a and boss: one other");
        let (_c, _out_c) = connect(&hub, Some("c"), None);
        let fan = hub.handle(&a, parse_client_text("to everyone").unwrap());
        assert_eq!(fan.len(), 1, "a broadcast reaching boss and c");
    }

    #[test]
    fn server_messages_and_listings() {
        let hub = Hub::new();
        let (_, out_a) = connect(&hub, Some("a"), Some("g"));
        let (_, out_b) = connect(&hub, Some("b"), None);
        out_a.take();
        out_b.take();
        assert_eq!(hub.send_from_server("b", "hello"), Ok(()));
        let p = out_b.take();
        assert_eq!(
            (p[0]["type"].as_str(), p[0]["from"].as_str(), p[0]["to"].as_str()),
            (Some("private"), Some("server"), Some("b"))
        );
        assert_eq!(hub.send_from_server("zz", "hello"), Err(NotSent::NotConnected));
        assert_eq!(hub.group_from_server("g", "all"), Some(1));
        let g = out_a.take();
        assert_eq!(
            (g[0]["type"].as_str(), g[0]["from"].as_str(), g[0]["group"].as_str()),
            (Some("group"), Some("server"), Some("g"))
        );
        assert_eq!(hub.group_from_server("nope", "x"), None);
        let clients = hub.clients();
        assert_eq!(clients.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(clients[0].group.as_deref(), Some("g"));
        assert_eq!(hub.shutdown(), 2);
        assert_eq!(out_a.closed().unwrap().0, 1001);
        assert!(hub.is_empty() && hub.groups().is_empty());
    }
}

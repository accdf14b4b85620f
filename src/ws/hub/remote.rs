//! The hub's seam to the other instances (`CLUSTER=postgres`, see `crate::cluster`).
//!
//! Outward: the hub tells its `Link` what the others must hear — registrations, group changes
//! and departures of *local* clients (`Event::{Connected, Moved, Gone}`, published under the hub
//! lock so they leave in the order they happened; the link only queues in memory), and messages
//! for clients held elsewhere (`Event::{Private, Group, Broadcast}`, after the lock, in the
//! sender's order).
//!
//! Inward: the cluster bridge applies what the others said through the `remote_*` methods
//! below. A remote client is an ordinary registry entry with `home: Remote` and an outbox that
//! drops frames (`Elsewhere`): the rules of the contract (notices, lists, takeover) run on it
//! exactly as on a local one, and each instance delivers only to the clients it holds.
//!
//! Must never: publish an event for a remote client (the echo would never end); call the link
//! for anything but an in-memory queue push while holding the hub lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Client, Hub, Member, Outbox, Outgoing, Pushed, State, Target, Targets};
use crate::ws::protocol::{Encoded, ErrorCode, ServerFrame};

/// Which instance's connection a client is, as the instance that holds it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub instance: Arc<str>,
    /// The serial of the registration on its own instance.
    pub serial: u64,
}

/// Where a client's connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// On this instance: its outbox is its session's queue.
    Local,
    /// On another instance, which delivers to it.
    Remote(Origin),
}

/// What the other instances must hear. Borrowed: the link encodes it before returning.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A local client registered (possibly taking its id over from an older connection).
    Connected { id: &'a str, serial: u64, group: Option<&'a str>, connected_at: SystemTime },
    /// A local client joined `group` (leaving its old one) or, with `None`, left its group.
    Moved { id: &'a str, serial: u64, group: Option<&'a str> },
    /// A local client is gone (left, evicted, or replaced by a connection elsewhere).
    Gone { id: &'a str, serial: u64 },
    /// A private message for `to`, held by `instance`.
    Private { from: &'a str, to: &'a str, instance: &'a str, message: &'a str },
    /// A group message: each instance of `to` (the instances that held members of `group` when
    /// it was sent, as the sender's instance saw it) delivers it to its own members of `group`.
    /// An instance not in `to` ignores it, so a client that joins on another instance just after
    /// the message was sent does not get it late.
    Group { from: &'a str, group: &'a str, message: &'a str, to: &'a [Arc<str>] },
    /// A message to everyone (plain text from a client without a group).
    Broadcast { from: &'a str, message: &'a str },
}

/// Why a message for another instance was not handed over: said to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

/// Why `Hub::send_from_server` did not send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSent {
    NotConnected,
    Unreachable(Unreachable),
}

/// The other instances, as the hub sees them. Implemented by `crate::cluster`.
pub trait Link: Send + Sync {
    /// This instance's name.
    fn instance(&self) -> &str;
    /// Queue `ev` for the other instances. Never blocks, never calls back into the hub. A state
    /// event that cannot be queued is not an error for the caller (the link resynchronises the
    /// whole presence of this instance later); a message that cannot be is.
    fn publish(&self, ev: Event<'_>) -> Result<(), Unreachable>;
    /// Whether messages for `instance` can be delivered now.
    fn reachable(&self, instance: &str) -> bool;
}

/// A client held by another instance, as its snapshot lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteClient {
    pub id: String,
    pub serial: u64,
    pub group: Option<String>,
    pub connected_at: SystemTime,
}

/// An error frame (`client_not_found`) about recipients on other instances.
fn error_frame(text: &str) -> Encoded {
    ServerFrame::Error { code: ErrorCode::ClientNotFound, message: text }.encode()
}

/// The outbox of a remote client: its own instance delivers, so this drops everything.
struct Elsewhere;

impl Outbox for Elsewhere {
    fn push(&self, _frame: &Encoded) -> Pushed {
        Pushed::Queued
    }
    fn start(&self) {}
    fn close(&self, _code: u16, _reason: &str, _discard_queued: bool) {}
}

/// A message for other instances, decided under the lock and published after it.
pub(super) enum Relay {
    Private { to: String, message: String },
    Group { group: Arc<str>, message: String },
    Broadcast { message: String },
}

/// How many recipients of a message each other instance holds.
pub(super) struct Spread(BTreeMap<Arc<str>, usize>);

impl Spread {
    /// The instances that hold recipients.
    pub(super) fn instances(&self) -> Vec<Arc<str>> {
        self.0.keys().cloned().collect()
    }

    pub(super) fn one(instance: Arc<str>) -> Spread {
        Spread(BTreeMap::from([(instance, 1)]))
    }

    fn of<'a>(st: &State, ids: impl Iterator<Item = &'a Arc<str>>) -> Option<Spread> {
        let mut map = BTreeMap::new();
        for id in ids {
            if let Some(instance) = st.home_of(id) {
                *map.entry(instance).or_insert(0) += 1;
            }
        }
        (!map.is_empty()).then_some(Spread(map))
    }
}

impl State {
    /// The instance holding `id`, when it is not this one.
    pub(super) fn home_of(&self, id: &str) -> Option<Arc<str>> {
        match &self.clients.get(id)?.home {
            Home::Local => None,
            Home::Remote(o) => Some(o.instance.clone()),
        }
    }

    /// Put `id` (registered) into `group` (or none), with the notices to local members.
    fn move_to(&mut self, id: &Arc<str>, group: Option<Arc<str>>, outgoing: &mut Outgoing) {
        let Some(old) = self.clients.get(id).map(|c| c.group.clone()) else { return };
        if old == group {
            return;
        }
        if let Some(old) = &old {
            self.leave_group(old, id);
            let (i, o) = (id.clone(), old.clone());
            outgoing.add(self.members(old), move || ServerFrame::Leave { client_id: &i, group: &o }.encode());
        }
        if let Some(g) = &group {
            let others = self.members(g);
            self.join_group(g, id);
            let (i, g) = (id.clone(), g.clone());
            outgoing.add(others, move || ServerFrame::Join { client_id: &i, group: &g }.encode());
        }
        if let Some(c) = self.clients.get_mut(id) {
            c.group = group;
        }
    }
}

impl Hub {
    /// Connect this hub to the other instances. Once; later calls are ignored.
    pub fn set_link(&self, link: Arc<dyn Link>) {
        let _ = self.link.set(link);
    }

    /// Tell the others about a local client (called under the lock: the link only queues).
    pub(super) fn publish_state(&self, ev: Event<'_>) {
        if let Some(link) = self.link.get() {
            let _ = link.publish(ev);
        }
    }

    pub(super) fn spread_group(&self, st: &State, group: &str) -> Option<Spread> {
        self.link.get()?;
        Spread::of(st, st.groups.get(group)?.ids.iter())
    }

    pub(super) fn spread_all(&self, st: &State) -> Option<Spread> {
        self.link.get()?;
        Spread::of(st, st.clients.keys())
    }

    /// Hand a message to the instances of `spread`. Returns how many recipients it cannot reach.
    pub(super) fn relay(&self, ev: Event<'_>, spread: &Spread) -> usize {
        let Some(link) = self.link.get() else { return spread.0.values().sum() };
        let unreachable: usize = spread.0.iter().filter(|(i, _)| !link.reachable(i)).map(|(_, n)| n).sum();
        if unreachable == spread.0.values().sum::<usize>() {
            return unreachable;
        }
        match link.publish(ev) {
            Ok(()) => unreachable,
            Err(_) => spread.0.values().sum(),
        }
    }

    /// A client's message for other instances: relay it, and tell the sender what happened
    /// (`sent` for a private message that left, an error for recipients that cannot be reached).
    pub(super) fn relay_for(&self, m: &Member, me: Targets, relay: Relay, spread: &Spread, outgoing: &mut Outgoing) {
        match relay {
            Relay::Private { to, message } => {
                let instance = spread.0.keys().next().cloned().unwrap_or_else(|| Arc::from(""));
                let ev = Event::Private { from: &m.id, to: &to, instance: &instance, message: &message };
                let reachable = self.link.get().is_some_and(|l| l.reachable(&instance));
                let result = if reachable {
                    self.link.get().map_or(Err(Unreachable("no cluster link".into())), |l| l.publish(ev))
                } else {
                    Err(Unreachable(format!("instance {instance} cannot be reached now")))
                };
                match result {
                    Ok(()) => outgoing.add(me, move || ServerFrame::Sent { to: &to, message: &message }.encode()),
                    Err(Unreachable(why)) => {
                        let text = format!("client {to} is connected to another instance and {why}: not delivered");
                        outgoing.add(me, move || error_frame(&text))
                    }
                }
            }
            Relay::Group { group, message } => {
                let to = spread.instances();
                let missed =
                    self.relay(Event::Group { from: &m.id, group: &group, message: &message, to: &to }, spread);
                if missed > 0 {
                    let text = format!(
                        "{missed} member(s) of group {group} are on instances that cannot be reached now: \
                         they did not get this message"
                    );
                    outgoing.add(me, move || error_frame(&text));
                }
            }
            Relay::Broadcast { message } => {
                let missed = self.relay(Event::Broadcast { from: &m.id, message: &message }, spread);
                if missed > 0 {
                    let text = format!(
                        "{missed} client(s) are on instances that cannot be reached now: they did not get this message"
                    );
                    outgoing.add(me, move || error_frame(&text));
                }
            }
        }
    }

    /// Another instance registered `id` (`origin`). Applied like a connect: it takes the id over
    /// from an older connection here (closed with 4000 `replaced`) or elsewhere, with `leave` and
    /// `join` notices to this instance's members. When two connections claim the id at once, the
    /// later `connected_at` wins (ties: the greater instance name), on every instance alike.
    pub fn remote_connect(&self, origin: Origin, id: &str, group: Option<&str>, connected_at: SystemTime) {
        let id: Arc<str> = Arc::from(id);
        let group: Option<Arc<str>> = group.map(Arc::from);
        let mut outgoing = Outgoing::default();
        let mut st = self.lock();
        if let Some(cur) = st.clients.get(&id) {
            let cur_instance = match &cur.home {
                Home::Remote(o) if *o == origin => None,
                Home::Remote(o) => Some(o.instance.clone()),
                Home::Local => Some(Arc::from(self.link.get().map_or("", |l| l.instance()))),
            };
            match cur_instance {
                None => {
                    // Known already (a snapshot and a notification both said so): only the group
                    // may have changed.
                    st.move_to(&id, group, &mut outgoing);
                    drop(st);
                    self.deliver(outgoing);
                    return;
                }
                Some(ci) if (cur.connected_at, &*ci) > (connected_at, &*origin.instance) => return,
                Some(_) => {}
            }
        }
        let old = st.clients.remove(&id);
        if let Some(old_group) = old.as_ref().and_then(|o| o.group.clone()) {
            st.leave_group(&old_group, &id);
            if group.as_ref() != Some(&old_group) {
                let (i, g) = (id.clone(), old_group.clone());
                outgoing.add(st.members(&old_group), move || ServerFrame::Leave { client_id: &i, group: &g }.encode());
            }
        }
        let serial = self.next_serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out: Arc<dyn Outbox> = Arc::new(Elsewhere);
        // `admin` only matters for `/join admins`, which the client's own instance decides.
        let client =
            Client { serial, admin: false, out, group: group.clone(), connected_at, home: Home::Remote(origin) };
        st.clients.insert(id.clone(), client);
        if let Some(g) = &group {
            let others = st.members(g);
            st.join_group(g, &id);
            let (i, g) = (id.clone(), g.clone());
            outgoing.add(others, move || ServerFrame::Join { client_id: &i, group: &g }.encode());
        }
        if let Some(old) = &old {
            if old.home == Home::Local {
                // Our connection lost the id: its row goes (the others already follow `origin`).
                self.publish_state(Event::Gone { id: &id, serial: old.serial });
            }
        }
        drop(st);
        if let Some(old) = old {
            old.out.close(4000, "replaced", false);
        }
        self.deliver(outgoing);
    }

    /// Another instance's client `id` (`origin`) changed group.
    pub fn remote_moved(&self, origin: &Origin, id: &str, group: Option<&str>) {
        let mut outgoing = Outgoing::default();
        let mut st = self.lock();
        let Some((key, _)) = st.clients.get_key_value(id).filter(|(_, c)| c.home == Home::Remote(origin.clone()))
        else {
            return;
        };
        let key = key.clone();
        st.move_to(&key, group.map(Arc::from), &mut outgoing);
        drop(st);
        self.deliver(outgoing);
    }

    /// Another instance's client `id` (`origin`) is gone: `leave` to this instance's members.
    pub fn remote_gone(&self, origin: &Origin, id: &str) {
        let serial = {
            let st = self.lock();
            match st.clients.get(id) {
                Some(c) if c.home == Home::Remote(origin.clone()) => c.serial,
                _ => return,
            }
        };
        // A removal like a disconnect; `remove` checks the serial again under the lock.
        self.disconnect(&Member { id: Arc::from(id), serial });
    }

    /// Everything `instance` holds, from its snapshot: clients it no longer lists are gone,
    /// the others are (re)registered. An empty list forgets the instance (it stopped or died).
    pub fn remote_replace(&self, instance: &str, clients: &[RemoteClient]) {
        let listed: std::collections::HashMap<(&str, u64), &RemoteClient> =
            clients.iter().map(|c| ((c.id.as_str(), c.serial), c)).collect();
        let stale: Vec<(Origin, Arc<str>)> = {
            let st = self.lock();
            st.clients
                .iter()
                .filter_map(|(id, c)| match &c.home {
                    Home::Remote(o) if &*o.instance == instance && !listed.contains_key(&(&**id, o.serial)) => {
                        Some((o.clone(), id.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        for (origin, id) in stale {
            self.remote_gone(&origin, &id);
        }
        let instance: Arc<str> = Arc::from(instance);
        for c in clients {
            let origin = Origin { instance: instance.clone(), serial: c.serial };
            self.remote_connect(origin, &c.id, c.group.as_deref(), c.connected_at);
        }
    }

    /// The instances that hold clients known here.
    pub fn remote_instances(&self) -> Vec<Arc<str>> {
        let st = self.lock();
        let mut v: Vec<Arc<str>> = st
            .clients
            .values()
            .filter_map(|c| match &c.home {
                Home::Remote(o) => Some(o.instance.clone()),
                Home::Local => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A private message from another instance, for the local client `to`. False when `to` is
    /// not here (it left or moved meanwhile).
    pub fn remote_private(&self, from: &str, to: &str, message: &str) -> bool {
        let target = {
            let st = self.lock();
            match st.clients.get(to) {
                Some(c) if c.home == Home::Local => st.target(&Arc::from(to)),
                _ => None,
            }
        };
        let Some(target) = target else { return false };
        let mut outgoing = Outgoing::default();
        let (f, t, m): (Arc<str>, Arc<str>, Arc<str>) = (from.into(), to.into(), message.into());
        outgoing.add(vec![target], move || ServerFrame::Private { from: &f, to: &t, message: &m }.encode());
        self.deliver(outgoing) == 1
    }

    /// A group message from another instance: to this instance's members of `group`.
    pub fn remote_group(&self, from: &str, group: &str, message: &str) {
        let targets = self.lock().members(group);
        let mut outgoing = Outgoing::default();
        let (f, g, m): (Arc<str>, Arc<str>, Arc<str>) = (from.into(), group.into(), message.into());
        outgoing.add(targets, move || ServerFrame::Group { from: &f, group: &g, message: &m }.encode());
        self.deliver(outgoing);
    }

    /// A message to everyone from another instance: to this instance's clients.
    pub fn remote_broadcast(&self, from: &str, message: &str) {
        let targets: Vec<Target> = {
            let st = self.lock();
            st.clients.iter().filter(|(_, c)| c.home == Home::Local).filter_map(|(id, _)| st.target(id)).collect()
        };
        let mut outgoing = Outgoing::default();
        let (f, m): (Arc<str>, Arc<str>) = (from.into(), message.into());
        outgoing.add(targets, move || ServerFrame::Broadcast { from: &f, message: &m }.encode());
        self.deliver(outgoing);
    }

    /// This instance's clients, for its snapshot.
    pub fn local_clients(&self) -> Vec<RemoteClient> {
        let st = self.lock();
        st.clients
            .iter()
            .filter(|(_, c)| c.home == Home::Local)
            .map(|(id, c)| RemoteClient {
                id: id.to_string(),
                serial: c.serial,
                group: c.group.as_deref().map(str::to_string),
                connected_at: c.connected_at,
            })
            .collect()
    }

    /// An error frame to the local client `id` (registration `serial`), e.g. a message of its
    /// that was lost with the database connection. False when it is no longer here.
    pub fn tell(&self, id: &str, code: ErrorCode, message: &str) -> bool {
        let target = {
            let st = self.lock();
            match st.clients.get(id) {
                Some(c) if c.home == Home::Local => st.target(&Arc::from(id)),
                _ => None,
            }
        };
        let Some(target) = target else { return false };
        let mut outgoing = Outgoing::default();
        let message = message.to_string();
        outgoing.add(vec![target], move || ServerFrame::Error { code, message: &message }.encode());
        self.deliver(outgoing) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{connect, run};
    use super::*;
    use std::sync::Mutex;

    /// A link that records what it is given; `down` instances are unreachable.
    #[derive(Default)]
    struct FakeLink {
        events: Mutex<Vec<String>>,
        down: Mutex<Vec<String>>,
    }

    impl Link for FakeLink {
        fn instance(&self) -> &str {
            "me"
        }
        fn publish(&self, ev: Event<'_>) -> Result<(), Unreachable> {
            let text = match ev {
                Event::Connected { id, group, .. } => format!("connected {id} {group:?}"),
                Event::Moved { id, group, .. } => format!("moved {id} {group:?}"),
                Event::Gone { id, .. } => format!("gone {id}"),
                Event::Private { from, to, instance, message } => format!("private {from}>{to}@{instance} {message}"),
                Event::Group { from, group, message, .. } => format!("group {from}>{group} {message}"),
                Event::Broadcast { from, message } => format!("broadcast {from} {message}"),
            };
            self.events.lock().unwrap().push(text);
            Ok(())
        }
        fn reachable(&self, instance: &str) -> bool {
            !self.down.lock().unwrap().iter().any(|d| d == instance)
        }
    }

    impl FakeLink {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.events.lock().unwrap())
        }
    }

    fn origin(instance: &str, serial: u64) -> Origin {
        Origin { instance: Arc::from(instance), serial }
    }

    fn clustered() -> (Hub, Arc<FakeLink>) {
        let hub = Hub::new();
        let link = Arc::new(FakeLink::default());
        hub.set_link(link.clone());
        (hub, link)
    }

    #[test]
    fn local_changes_are_published_and_remote_ones_are_not() {
        let (hub, link) = clustered();
        let (a, _out_a) = connect(&hub, Some("a"), Some("g"));
        run(&hub, &a, "/join h");
        run(&hub, &a, "/leave");
        assert_eq!(link.take(), ["connected a Some(\"g\")", "moved a Some(\"h\")", "moved a None"]);
        hub.remote_connect(origin("i2", 1), "b", Some("g"), SystemTime::now());
        hub.remote_moved(&origin("i2", 1), "b", Some("h"));
        hub.remote_gone(&origin("i2", 1), "b");
        assert!(link.take().is_empty(), "an echo of a remote change");
        hub.disconnect(&a);
        assert_eq!(link.take(), ["gone a"]);
    }

    #[test]
    fn remote_members_get_notices_relays_and_count_in_lists() {
        let (hub, link) = clustered();
        let (a, out_a) = connect(&hub, Some("a"), Some("g"));
        out_a.take();
        link.take();
        hub.remote_connect(origin("i2", 7), "b", Some("g"), SystemTime::now());
        let j = out_a.take();
        assert_eq!((j[0]["type"].as_str(), j[0]["client_id"].as_str()), (Some("join"), Some("b")));
        assert_eq!(hub.members("g").unwrap(), ["a", "b"]);
        assert_eq!(hub.clients().len(), 2);
        // A group message: the local member gets it here, the link carries it once.
        run(&hub, &a, "/group hi");
        assert_eq!(out_a.types(), ["group"]);
        assert_eq!(link.take(), ["group a>g hi"]);
        // A private message for b goes to b's instance; a gets `sent`.
        run(&hub, &a, "/send_to b psst");
        assert_eq!(link.take(), ["private a>b@i2 psst"]);
        assert_eq!(out_a.types(), ["sent"]);
        // Unreachable: an error instead, nothing published.
        link.down.lock().unwrap().push("i2".into());
        run(&hub, &a, "/send_to b psst");
        let e = out_a.take();
        assert_eq!(e[0]["error"], "client_not_found");
        assert!(e[0]["message"].as_str().unwrap().contains("cannot be reached"), "{}", e[0]);
        run(&hub, &a, "/group hi");
        let frames = out_a.take();
        assert_eq!(frames[0]["type"], "group", "local members still get it");
        assert!(frames[1]["message"].as_str().unwrap().starts_with("1 member(s) of group g"), "{}", frames[1]);
        assert!(link.take().is_empty());
        assert_eq!(hub.group_from_server("g", "x"), Some(1), "only the reachable member counts");
        assert!(matches!(hub.send_from_server("b", "x"), Err(NotSent::Unreachable(_))));
        link.down.lock().unwrap().clear();
        assert_eq!(hub.group_from_server("g", "x"), Some(2));
        assert_eq!(hub.send_from_server("b", "x"), Ok(()));
        // Remote traffic reaches local clients only.
        hub.remote_group("b", "g", "from b");
        assert_eq!(out_a.take().last().unwrap()["message"], "from b");
        assert!(hub.remote_private("b", "a", "to a"));
        assert!(!hub.remote_private("a", "b", "b is not here"));
        // b's instance forgets it: a leave.
        hub.remote_replace("i2", &[]);
        let l = out_a.take();
        assert_eq!(
            (l.last().unwrap()["type"].as_str(), l.last().unwrap()["client_id"].as_str()),
            (Some("leave"), Some("b"))
        );
        assert_eq!(hub.members("g").unwrap(), ["a"]);
    }

    #[test]
    fn takeover_across_instances_and_the_later_connection_wins() {
        let (hub, link) = clustered();
        let (_x, out_x) = connect(&hub, Some("x"), Some("g"));
        let (_w, out_w) = connect(&hub, Some("w"), Some("g"));
        out_w.take();
        link.take();
        let local_at = SystemTime::now();
        // An older claim from elsewhere (it lost the race): ignored everywhere.
        hub.remote_connect(origin("i2", 1), "x", Some("g"), local_at - std::time::Duration::from_secs(1));
        assert!(out_x.closed().is_none());
        // A newer one takes the id over: 4000 here, the row of ours goes, the group hears a join.
        hub.remote_connect(origin("i2", 2), "x", Some("g"), SystemTime::now() + std::time::Duration::from_secs(1));
        assert_eq!(out_x.closed(), Some((4000, "replaced".into(), false)));
        assert_eq!(link.take(), ["gone x"]);
        assert_eq!(out_w.types(), ["join"]);
        assert_eq!(hub.members("g").unwrap(), ["w", "x"]);
        assert_eq!(hub.local_clients().len(), 1);
        // The same claim again (snapshot and notification both): nothing new.
        hub.remote_connect(origin("i2", 2), "x", Some("g"), SystemTime::now());
        assert!(out_w.take().is_empty());
        // A stale departure of a connection that is not the current one changes nothing.
        hub.remote_gone(&origin("i2", 1), "x");
        assert_eq!(hub.members("g").unwrap(), ["w", "x"]);
        // A snapshot is the whole truth of its instance.
        let now = SystemTime::now();
        hub.remote_replace(
            "i2",
            &[RemoteClient { id: "y".into(), serial: 3, group: Some("g".into()), connected_at: now }],
        );
        assert_eq!(hub.members("g").unwrap(), ["w", "y"]);
        assert_eq!(out_w.types(), ["leave", "join"]);
        assert_eq!(hub.remote_instances(), vec![Arc::<str>::from("i2")]);
    }
}

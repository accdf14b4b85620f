//! Admission: how many connections are open (in all and per client address) and how many long
//! transfers run in workers (in all and per client address). Plain counting behind one lock;
//! the slots it hands out give their place back when dropped, so no path through the server —
//! a panic included — can leak a count.
//!
//! Bounds: the map has one entry per client address with an open connection, so it is bounded
//! by `max_open`. The lock is held for a map update only (never across I/O), once per
//! connection accepted or closed and once per long transfer started or finished — never per
//! ordinary request.
//!
//! Must never: block, or do I/O under its lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

/// The limits a `Gate` enforces.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    /// Most open connections (`MAX_CONNECTIONS`).
    pub max_open: usize,
    /// Most open connections from one client address (`MAX_CONNECTIONS_PER_ADDR`).
    pub max_open_per_addr: usize,
    /// Most workers in a long transfer at once (`TRANSFER_WORKERS`).
    pub max_transfers: usize,
    /// Most long transfers from one client address at once (`MAX_TRANSFERS_PER_ADDR`).
    pub max_transfers_per_addr: usize,
}

#[derive(Default)]
struct Counts {
    open: usize,
    transfers: usize,
    by_addr: HashMap<IpAddr, (usize, usize)>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_open` reached.
    Full,
    /// `max_open_per_addr` reached for this address.
    AddrFull,
}

/// The counters, shared by the dispatcher and the workers.
pub struct Gate {
    limits: GateLimits,
    counts: Mutex<Counts>,
    /// Written to when a transfer slot frees, so the dispatcher admits a parked request.
    wake: UnixStream,
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // Every critical section is a few integer updates: a poisoned lock still holds good data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gate {
    pub fn new(limits: GateLimits, wake: UnixStream) -> Arc<Gate> {
        Arc::new(Gate { limits, counts: Mutex::new(Counts::default()), wake })
    }

    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        lock(&self.counts).open
    }

    /// Count a new connection from `ip`, or say why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let mut c = lock(&self.counts);
        if c.open >= self.limits.max_open {
            return Err(Refusal::Full);
        }
        let entry = c.by_addr.entry(ip).or_insert((0, 0));
        if entry.0 >= self.limits.max_open_per_addr {
            return Err(Refusal::AddrFull);
        }
        entry.0 += 1;
        c.open += 1;
        Ok(ConnSlot { gate: self.clone(), ip })
    }

    /// A slot for a long transfer from `ip`, if both caps allow one now.
    pub fn transfer(self: &Arc<Self>, ip: IpAddr) -> Result<TransferSlot, Refusal> {
        let mut c = lock(&self.counts);
        if c.transfers >= self.limits.max_transfers {
            return Err(Refusal::Full);
        }
        let entry = c.by_addr.entry(ip).or_insert((0, 0));
        if entry.1 >= self.limits.max_transfers_per_addr {
            return Err(Refusal::AddrFull);
        }
        entry.1 += 1;
        c.transfers += 1;
        Ok(TransferSlot { gate: self.clone(), ip })
    }

    fn release(&self, ip: IpAddr, conn: usize, transfer: usize) {
        let mut c = lock(&self.counts);
        c.open -= conn;
        c.transfers -= transfer;
        if let Some(e) = c.by_addr.get_mut(&ip) {
            e.0 -= conn;
            e.1 -= transfer;
            if *e == (0, 0) {
                c.by_addr.remove(&ip);
            }
        }
    }
}

/// One open connection's place; given back on drop.
pub struct ConnSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gate.release(self.ip, 1, 0);
    }
}

/// One long transfer's place; given back on drop (and the dispatcher is woken to admit the next
/// parked request).
pub struct TransferSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        self.gate.release(self.ip, 0, 1);
        // A full socket buffer already means "wake up".
        let _ = std::io::Write::write(&mut &self.gate.wake, b"t");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_open: usize, per_addr: usize, transfers: usize, transfers_per_addr: usize) -> Arc<Gate> {
        let (w, _r) = UnixStream::pair().unwrap();
        w.set_nonblocking(true).unwrap();
        Gate::new(
            GateLimits {
                max_open,
                max_open_per_addr: per_addr,
                max_transfers: transfers,
                max_transfers_per_addr: transfers_per_addr,
            },
            w,
        )
    }

    #[test]
    fn caps_at_the_edge_and_slots_give_back() {
        let g = gate(3, 2, 2, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some(Refusal::AddrFull));
        let _b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(b).err(), Some(Refusal::Full));
        drop(a1);
        assert_eq!(g.open(), 2);
        let _b2 = g.admit(b).unwrap();

        let t1 = g.transfer(a).unwrap();
        assert_eq!(g.transfer(a).err(), Some(Refusal::AddrFull), "one transfer per address");
        let t2 = g.transfer(b).unwrap();
        assert_eq!(g.transfer("10.0.0.3".parse().unwrap()).err(), Some(Refusal::Full), "two in all");
        drop(t1);
        assert!(g.transfer(a).is_ok());
        drop(t2);
    }

    #[test]
    fn addresses_leave_the_map_when_done() {
        let g = gate(10, 10, 10, 10);
        let a: IpAddr = "::1".parse().unwrap();
        let s = g.admit(a).unwrap();
        let t = g.transfer(a).unwrap();
        drop(s);
        drop(t);
        assert!(lock(&g.counts).by_addr.is_empty());
    }
}

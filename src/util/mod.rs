//! Small helpers shared by several concerns, with no knowledge of any of them.
//! Must never: grow into a grab bag. A helper that belongs to one concern lives there.

pub mod fifo;
pub mod hash_pipe;
pub mod log;
pub mod mem;
pub mod rlimit;
pub mod time;
pub mod tmp_owner;

//! The Lua scripts, each in a `.lua` file beside this one, with the helpers of
//! `common.lua` in front. Above each, what its `ARGV` holds.

use std::sync::LazyLock;

use redis::Script;

/// Helpers every script shares. `head` reads an entry's fields (nil for an entry in
/// another shape: such an entry's id is `~` and its position in its receive's list);
/// `holder` finds which receive holds a delivery's lease (its own, once extended apart
/// from its batch); `settle` marks deliveries of a receive settled and drops the
/// receive's keys once all are; `take` settles one delivery and returns its entry.
/// Whole batches go to the server as one command (`chunked`, in runs of 1,000 under
/// Lua's limit on unpacked values).
const COMMON: &str = include_str!("common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

// ARGV: prefix, dedup ttl ms, now, n, then per message: entry, visible_at, dedup key ("" for none).
pub(super) static INSERT: LazyLock<Script> = LazyLock::new(|| script(include_str!("insert.lua")));

// ARGV: prefix, now. Moves due delays and the entries of lapsed receives (not settled
// one by one) back to `…:ready`, the latter with one more attempt and a first failure.
// Returns how many it moved.
pub(super) static MAINTAIN: LazyLock<Script> = LazyLock::new(|| script(include_str!("maintain.lua")));

// ARGV: prefix, id, token, now.
pub(super) static ACK: LazyLock<Script> = LazyLock::new(|| script(include_str!("ack.lua")));

// ARGV: prefix, now, then per receive: its token, how many of its deliveries follow, and
// their ids. Returns 1 or 0 per id, in order. The deliveries of one receive are judged
// together: one lease lookup, and when they are all of it, the
// receive's keys go without a look at its entries.
pub(super) static ACK_MANY: LazyLock<Script> = LazyLock::new(|| script(include_str!("ack_many.lua")));

// ARGV: prefix, id, token, now, visible_at, failed (0/1), refund (0/1).
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("release.lua")));

// ARGV: prefix, id, token, now, until. A delivery still sharing its receive's lease with
// others unsettled moves to a receive of its own; otherwise its lease moves on.
pub(super) static EXTEND: LazyLock<Script> = LazyLock::new(|| script(include_str!("extend.lua")));

// ARGV: prefix, target prefix, id, token, now, headers ("" for none).
pub(super) static MOVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("move.lua")));

// ARGV: from prefix, to prefix, limit. Moves visible messages, attempts 0.
pub(super) static REDRIVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("redrive.lua")));

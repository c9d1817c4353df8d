// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Transaction-id tables: a request that expects a completion from the host
//! gets an id from a [`RequestTable`]; the completion's id is looked up with
//! [`RequestTable::take`], which returns the request *only* if that id is
//! outstanding right now.
//!
//! # Id encoding
//!
//! `id = generation << 32 | (slot index + 1)`. The low half is never 0, so
//! id 0 (an unsolicited packet) never matches, and it is at most
//! [`MAX_CAPACITY`], so the sentinel values near `u64::MAX` that drivers use
//! are never produced. Each slot's generation is bumped whenever the slot is
//! freed, so a late or duplicated completion for a slot that has since been
//! reused carries the old generation and is rejected as stale.
//!
//! The table never allocates after construction: free slots form an intrusive
//! singly-linked list (O(1) insert and take). Storage is either a `Vec`
//! (feature `alloc`, [`RequestTable::with_capacity`]), an inline array
//! ([`ArrayRequestTable`]) or any caller-provided `&mut [Slot<T>]`.

use core::fmt;
use core::marker::PhantomData;

/// The most slots a table uses (larger storage is used only up to this).
pub const MAX_CAPACITY: usize = (u32::MAX - 16) as usize;

const NO_SLOT: u32 = u32::MAX;

/// One slot of a table (opaque; create with [`Slot::EMPTY`] or [`Slot::new`]).
pub struct Slot<T> {
    value: Option<T>,
    generation: u32,
    next_free: u32,
}

impl<T> Slot<T> {
    /// A free slot.
    pub const EMPTY: Slot<T> = Slot { value: None, generation: 0, next_free: NO_SLOT };

    /// A free slot.
    pub const fn new() -> Slot<T> {
        Self::EMPTY
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("busy", &self.value.is_some()).field("generation", &self.generation).finish()
    }
}

/// The table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("transaction table full")
    }
}

impl core::error::Error for Full {}

/// Why a completion id was refused (see [`RequestStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRejection {
    /// Id 0 (unsolicited).
    Zero,
    /// The slot index is outside the table.
    OutOfRange,
    /// The slot is free (already completed, cancelled or never used).
    NotOutstanding,
    /// The slot is busy with a newer request (old generation).
    Stale,
}

impl fmt::Display for IdRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdRejection::Zero => "transaction id 0",
            IdRejection::OutOfRange => "transaction id out of range",
            IdRejection::NotOutstanding => "transaction id not outstanding",
            IdRejection::Stale => "stale transaction id",
        })
    }
}

impl core::error::Error for IdRejection {}

/// Counters of a table, for the glue's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Ids handed out.
    pub inserted: u64,
    /// Completions accepted.
    pub completed: u64,
    /// Inserts refused because the table was full.
    pub full: u64,
    /// Requests dropped by `cancel_all` / `drain`.
    pub cancelled: u64,
    /// Completions with id 0.
    pub rejected_zero: u64,
    /// Completions whose slot index is outside the table.
    pub rejected_out_of_range: u64,
    /// Completions for a free slot (double completion, never issued).
    pub rejected_not_outstanding: u64,
    /// Completions for a reused slot (old generation).
    pub rejected_stale: u64,
}

impl RequestStats {
    /// All rejected completions.
    pub fn rejected(&self) -> u64 {
        self.rejected_zero + self.rejected_out_of_range + self.rejected_not_outstanding + self.rejected_stale
    }
}

/// A transaction-id table over storage `S` (a `Vec`, an array or a slice of [`Slot<T>`]).
pub struct RequestTable<T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> {
    slots: S,
    capacity: u32,
    free_head: u32,
    outstanding: u32,
    stats: RequestStats,
    _t: PhantomData<T>,
}

/// A table with its slots inline.
pub type ArrayRequestTable<T, const N: usize> = RequestTable<T, [Slot<T>; N]>;

/// A heap-backed table sized once.
#[cfg(feature = "alloc")]
pub type VecRequestTable<T> = RequestTable<T, alloc::vec::Vec<Slot<T>>>;

impl<T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> fmt::Debug for RequestTable<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTable")
            .field("capacity", &self.capacity)
            .field("outstanding", &self.outstanding)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(feature = "alloc")]
impl<T> RequestTable<T, alloc::vec::Vec<Slot<T>>> {
    /// A table of `capacity` slots (clamped to [`MAX_CAPACITY`]), allocated now.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut v = alloc::vec::Vec::new();
        v.resize_with(capacity.min(MAX_CAPACITY), Slot::new);
        Self::with_storage(v)
    }
}

impl<T, const N: usize> RequestTable<T, [Slot<T>; N]> {
    /// A table with `N` inline slots.
    pub fn new_array() -> Self {
        Self::with_storage([const { Slot::EMPTY }; N])
    }
}

impl<T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> RequestTable<T, S> {
    /// A table over caller-provided storage. Slots already holding values
    /// are cleared; only the first [`MAX_CAPACITY`] slots are used.
    pub fn with_storage(mut slots: S) -> Self {
        let s = slots.as_mut();
        let capacity = s.len().min(MAX_CAPACITY) as u32;
        // Thread every slot onto the free list in index order.
        for (i, slot) in s.iter_mut().take(capacity as usize).enumerate() {
            slot.value = None;
            slot.next_free = if i as u32 + 1 < capacity { i as u32 + 1 } else { NO_SLOT };
        }
        RequestTable {
            slots,
            capacity,
            free_head: if capacity > 0 { 0 } else { NO_SLOT },
            outstanding: 0,
            stats: RequestStats::default(),
            _t: PhantomData,
        }
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.outstanding as usize
    }

    /// Whether no request is outstanding.
    pub fn is_empty(&self) -> bool {
        self.outstanding == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Counters.
    pub fn stats(&self) -> RequestStats {
        self.stats
    }

    fn make_id(index: u32, generation: u32) -> u64 {
        (generation as u64) << 32 | (index as u64 + 1)
    }

    /// Stores `value` and returns its id, or [`Full`].
    pub fn insert(&mut self, value: T) -> Result<u64, Full> {
        let index = self.free_head;
        let Some(slot) = self.slots.as_mut().get_mut(index as usize) else {
            self.stats.full += 1;
            return Err(Full);
        };
        self.free_head = slot.next_free;
        slot.next_free = NO_SLOT;
        slot.value = Some(value);
        self.outstanding += 1;
        self.stats.inserted += 1;
        Ok(Self::make_id(index, slot.generation))
    }

    /// Classifies `id` without changing anything; `Ok(index)` if outstanding.
    fn check(&self, id: u64) -> Result<usize, IdRejection> {
        let low = id as u32;
        let generation = (id >> 32) as u32;
        if id == 0 {
            return Err(IdRejection::Zero);
        }
        if low == 0 || low > self.capacity {
            return Err(IdRejection::OutOfRange);
        }
        let index = (low - 1) as usize;
        let slot = self.slots.as_ref().get(index).ok_or(IdRejection::OutOfRange)?;
        if slot.value.is_none() {
            Err(IdRejection::NotOutstanding)
        } else if slot.generation != generation {
            Err(IdRejection::Stale)
        } else {
            Ok(index)
        }
    }

    fn count_rejection(&mut self, r: IdRejection) {
        match r {
            IdRejection::Zero => self.stats.rejected_zero += 1,
            IdRejection::OutOfRange => self.stats.rejected_out_of_range += 1,
            IdRejection::NotOutstanding => self.stats.rejected_not_outstanding += 1,
            IdRejection::Stale => self.stats.rejected_stale += 1,
        }
    }

    /// The request with id `id` if it is outstanding (does not complete it).
    pub fn get(&self, id: u64) -> Option<&T> {
        let index = self.check(id).ok()?;
        self.slots.as_ref().get(index)?.value.as_ref()
    }

    /// Completes `id`: returns its request and frees the slot, or `None` (and
    /// counts the reason) if `id` is not outstanding.
    pub fn take(&mut self, id: u64) -> Option<T> {
        self.try_take(id).ok()
    }

    /// Like [`take`](Self::take) but says why an id was refused.
    pub fn try_take(&mut self, id: u64) -> Result<T, IdRejection> {
        match self.check(id) {
            Ok(index) => {
                let value = self.free_slot(index).ok_or(IdRejection::NotOutstanding)?;
                self.stats.completed += 1;
                Ok(value)
            }
            Err(r) => {
                self.count_rejection(r);
                Err(r)
            }
        }
    }

    /// Completes `id` only if `matches` accepts its request (e.g. the
    /// completion's type fits the request); a refused match counts as not outstanding.
    pub fn take_if(&mut self, id: u64, matches: impl FnOnce(&T) -> bool) -> Option<T> {
        match self.check(id) {
            Ok(index) => {
                let ok = self.slots.as_ref().get(index).and_then(|s| s.value.as_ref()).is_some_and(matches);
                if ok {
                    let v = self.free_slot(index);
                    self.stats.completed += 1;
                    v
                } else {
                    self.stats.rejected_not_outstanding += 1;
                    None
                }
            }
            Err(r) => {
                self.count_rejection(r);
                None
            }
        }
    }

    /// Frees slot `index`, bumping its generation, and returns its value.
    fn free_slot(&mut self, index: usize) -> Option<T> {
        let head = self.free_head;
        let slot = self.slots.as_mut().get_mut(index)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.next_free = head;
        self.free_head = index as u32;
        self.outstanding -= 1;
        Some(value)
    }

    /// Drops every outstanding request, handing each (id, request) to `f`
    /// (e.g. to complete it with a "channel gone" status after a rescind).
    pub fn cancel_all(&mut self, mut f: impl FnMut(u64, T)) {
        for (id, v) in self.drain() {
            f(id, v);
        }
    }

    /// Iterator that frees and yields every outstanding (id, request). If it
    /// is dropped early, the rest stay outstanding.
    pub fn drain(&mut self) -> Drain<'_, T, S> {
        Drain { table: self, next_index: 0 }
    }

    /// Ids of the outstanding requests, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .as_ref()
            .iter()
            .take(self.capacity as usize)
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| Self::make_id(i as u32, s.generation))
    }
}

/// See [`RequestTable::drain`].
pub struct Drain<'a, T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> {
    table: &'a mut RequestTable<T, S>,
    next_index: usize,
}

impl<T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> fmt::Debug for Drain<'_, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain").field("next_index", &self.next_index).finish()
    }
}

impl<T, S: AsRef<[Slot<T>]> + AsMut<[Slot<T>]>> Iterator for Drain<'_, T, S> {
    type Item = (u64, T);

    fn next(&mut self) -> Option<(u64, T)> {
        // Bounded by the capacity: each call advances next_index at least once.
        while self.next_index < self.table.capacity as usize && !self.table.is_empty() {
            let index = self.next_index;
            self.next_index += 1;
            let generation = self.table.slots.as_ref().get(index)?.generation;
            if let Some(v) = self.table.free_slot(index) {
                self.table.stats.cancelled += 1;
                return Some((RequestTable::<T, S>::make_id(index as u32, generation), v));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    #[test]
    fn basic_and_rejections() {
        let mut t: ArrayRequestTable<&str, 2> = RequestTable::new_array();
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(t.insert("c"), Err(Full));
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.try_take(0), Err(IdRejection::Zero));
        assert_eq!(t.try_take(3), Err(IdRejection::OutOfRange));
        assert_eq!(t.try_take(u64::MAX), Err(IdRejection::OutOfRange));
        assert_eq!(t.take(a), Some("a"));
        assert_eq!(t.try_take(a), Err(IdRejection::NotOutstanding));
        // Slot reuse: the old id is now stale.
        let c = t.insert("c").unwrap();
        assert_eq!(c as u32, a as u32);
        assert_ne!(c, a);
        assert_eq!(t.try_take(a), Err(IdRejection::Stale));
        assert_eq!(t.take_if(c, |v| *v == "x"), None);
        assert_eq!(t.take_if(c, |v| *v == "c"), Some("c"));
        let s = t.stats();
        assert_eq!(s.rejected_zero, 1);
        assert_eq!(s.rejected_out_of_range, 2);
        assert_eq!(s.rejected_not_outstanding, 2);
        assert_eq!(s.rejected_stale, 1);
        assert_eq!(s.full, 1);
        assert_eq!(s.completed, 2);
        let mut seen = Vec::new();
        t.cancel_all(|id, v| seen.push((id, v)));
        assert_eq!(seen, [(b, "b")]);
        assert!(t.is_empty());
        assert_eq!(t.take(b), None);
    }

    #[test]
    fn caller_storage_and_zero_capacity() {
        let mut storage: [Slot<u8>; 3] = Default::default();
        let mut t = RequestTable::with_storage(&mut storage[..]);
        for i in 0..3 {
            t.insert(i).unwrap();
        }
        assert_eq!(t.insert(9), Err(Full));
        let mut z: ArrayRequestTable<u8, 0> = RequestTable::new_array();
        assert_eq!(z.insert(1), Err(Full));
        assert_eq!(z.take(1), None);
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn heap_table() {
        let mut t: VecRequestTable<u32> = RequestTable::with_capacity(3);
        assert_eq!(t.capacity(), 3);
        let ids: Vec<u64> = (0..3).map(|i| t.insert(i).unwrap()).collect();
        assert_eq!(t.insert(3), Err(Full));
        assert_eq!(t.take(ids[1]), Some(1));
        assert_eq!(t.drain().map(|(_, v)| v).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(t.stats().cancelled, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        TakeIssued(usize),
        TakeRaw(u64),
        CancelAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u32>().prop_map(Op::Insert),
            4 => any::<usize>().prop_map(Op::TakeIssued),
            1 => any::<u64>().prop_map(Op::TakeRaw),
            1 => (0u64..10).prop_map(|x| Op::TakeRaw(x | 1 << 32)),
            1 => Just(Op::CancelAll),
        ]
    }

    proptest! {
        #[test]
        fn matches_hashmap_model(cap in 0usize..12, ops in proptest::collection::vec(op(), 0..200)) {
            let mut storage: Vec<Slot<u32>> = (0..cap).map(|_| Slot::new()).collect();
            let mut t = RequestTable::with_storage(&mut storage[..]);
            let mut model: HashMap<u64, u32> = HashMap::new();
            // Every id ever issued, so we replay old (stale, completed) ids too.
            let mut issued: Vec<u64> = Vec::new();
            let mut rejected = 0u64;
            for op in ops {
                match op {
                    Op::Insert(v) => match t.insert(v) {
                        Ok(id) => {
                            prop_assert!(model.len() < cap);
                            prop_assert!(id != 0 && !model.contains_key(&id));
                            model.insert(id, v);
                            issued.push(id);
                        }
                        Err(Full) => prop_assert_eq!(model.len(), cap),
                    },
                    Op::TakeIssued(i) => {
                        if issued.is_empty() { continue; }
                        let id = issued[i % issued.len()];
                        let got = t.take(id);
                        let want = model.remove(&id);
                        if want.is_none() { rejected += 1; }
                        prop_assert_eq!(got, want);
                    }
                    Op::TakeRaw(id) => {
                        let got = t.take(id);
                        let want = model.remove(&id);
                        if want.is_none() { rejected += 1; }
                        prop_assert_eq!(got, want);
                    }
                    Op::CancelAll => {
                        let mut drained = HashMap::new();
                        t.cancel_all(|id, v| { drained.insert(id, v); });
                        prop_assert_eq!(&drained, &model);
                        model.clear();
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.stats().rejected(), rejected);
                let mut ids: Vec<u64> = t.ids().collect();
                let mut mids: Vec<u64> = model.keys().copied().collect();
                ids.sort_unstable();
                mids.sort_unstable();
                prop_assert_eq!(ids, mids);
            }
        }
    }
}

//! Awareness (presence) state of one room, with the y-protocols merge rules: an entry wins
//! with a higher clock, or with the same clock when it removes a live state.

use super::protocol::{AwarenessEntries, AwarenessEntry};
use std::collections::HashMap;

#[derive(Debug)]
struct ClientState {
    clock: u32,
    /// JSON text; `None` once removed (the clock is kept so stale updates stay refused).
    state: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwarenessError {
    /// One connection claimed more client ids than allowed.
    TooManyClientsForConnection,
    /// The room holds as many live clients as allowed.
    TooManyClientsForRoom,
    /// One state is larger than `awareness_state_bytes_max`.
    StateTooLarge,
    /// One client id twice in one update: only the last could count, and the repeats would
    /// be relayed to everyone.
    RepeatedClient,
}

impl AwarenessError {
    pub fn reason(self) -> &'static str {
        match self {
            AwarenessError::TooManyClientsForConnection => {
                "too many awareness clients on one connection"
            }
            AwarenessError::TooManyClientsForRoom => "too many awareness clients in this document",
            AwarenessError::StateTooLarge => "awareness state too large",
            AwarenessError::RepeatedClient => "awareness update names a client twice",
        }
    }
}

/// The awareness states of one room.
#[derive(Debug)]
pub struct AwarenessStates {
    clients: HashMap<u64, ClientState>,
    /// Entries (live or removed) kept at most; removed ones are forgotten first.
    clients_max: usize,
    /// Bytes of JSON one state may hold.
    state_bytes_max: usize,
}

impl AwarenessStates {
    pub fn new(clients_max: usize, state_bytes_max: usize) -> Self {
        assert!(clients_max > 0 && state_bytes_max >= "null".len());
        AwarenessStates {
            clients: HashMap::new(),
            clients_max,
            state_bytes_max,
        }
    }

    /// Applies a client's update. `owned` is the list of client ids the sending connection
    /// controls (grown here, at most `owned_max`); they are removed when it leaves.
    /// Returns whether anything changed, i.e. whether the update is worth relaying.
    /// Every bound is checked before anything is applied: a refused update changes nothing
    /// (a state it left behind would belong to no connection and never be removed).
    pub fn apply(
        &mut self,
        entries: &AwarenessEntries<'_>,
        owned: &mut Vec<u64>,
        owned_max: usize,
    ) -> Result<bool, AwarenessError> {
        let mut forgettable = self.check(entries, owned, owned_max)?;
        let mut changed = false;
        for e in entries.iter() {
            let removes = e.state == "null";
            match self.clients.get_mut(&e.client_id) {
                Some(current) => {
                    let newer = current.clock < e.clock;
                    let removal_at_same_clock =
                        current.clock == e.clock && removes && current.state.is_some();
                    if newer || removal_at_same_clock {
                        current.clock = e.clock;
                        current.state = (!removes).then(|| e.state.into());
                        changed = true;
                    }
                }
                None => {
                    if self.clients.len() >= self.clients_max {
                        let id = forgettable.pop().expect("room space was checked");
                        let forgotten = self.clients.remove(&id);
                        debug_assert!(forgotten.is_some_and(|c| c.state.is_none()));
                    }
                    self.clients.insert(
                        e.client_id,
                        ClientState {
                            clock: e.clock,
                            state: (!removes).then(|| e.state.into()),
                        },
                    );
                    changed |= !removes;
                }
            }
            if !removes && !owned.contains(&e.client_id) {
                owned.push(e.client_id);
            }
        }
        debug_assert!(owned.len() <= owned_max && self.clients.len() <= self.clients_max);
        Ok(changed)
    }

    /// Whether `entries` can be applied whole: sizes, no client twice, the connection's and
    /// the room's client bounds. Returns the removed clients the room may forget to make
    /// room (none that the update names, which keep their place), as many as it needs.
    fn check(
        &self,
        entries: &AwarenessEntries<'_>,
        owned: &[u64],
        owned_max: usize,
    ) -> Result<Vec<u64>, AwarenessError> {
        // More entries than a room holds can only be repeats or over the bound.
        if entries.len > self.clients_max {
            return Err(AwarenessError::TooManyClientsForRoom);
        }
        // The ids the update names, sorted, to find repeats; a browser tab's update names
        // only its own client, and then nothing is allocated.
        let mut named: Vec<u64> = Vec::new();
        if entries.len > 1 {
            named = entries.iter().map(|e| e.client_id).collect();
            named.sort_unstable();
            if named.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err(AwarenessError::RepeatedClient);
            }
        }
        let (mut newly_owned, mut new_in_room) = (0, 0);
        for e in entries.iter() {
            if e.state.len() > self.state_bytes_max {
                return Err(AwarenessError::StateTooLarge);
            }
            newly_owned += usize::from(e.state != "null" && !owned.contains(&e.client_id));
            new_in_room += usize::from(!self.clients.contains_key(&e.client_id));
        }
        if owned.len() + newly_owned > owned_max {
            return Err(AwarenessError::TooManyClientsForConnection);
        }
        let free = self.clients_max - self.clients.len();
        if new_in_room <= free {
            return Ok(Vec::new());
        }
        let needed = new_in_room - free;
        let only = (entries.len == 1)
            .then(|| entries.iter().next().map(|e| e.client_id))
            .flatten();
        let forgettable: Vec<u64> = self
            .clients
            .iter()
            .filter(|(id, c)| {
                let in_update = match only {
                    Some(only) => only == **id,
                    None => named.binary_search(id).is_ok(),
                };
                c.state.is_none() && !in_update
            })
            .map(|(id, _)| *id)
            .take(needed)
            .collect();
        if forgettable.len() < needed {
            return Err(AwarenessError::TooManyClientsForRoom);
        }
        Ok(forgettable)
    }

    /// Removes the live states of `client_ids` (a connection that left) and returns the
    /// entries that announce the removal to everyone else.
    pub fn remove(&mut self, client_ids: &[u64]) -> Vec<(u64, u32)> {
        let mut removed = Vec::new();
        for id in client_ids {
            if let Some(c) = self.clients.get_mut(id) {
                if c.state.take().is_some() {
                    c.clock = c.clock.wrapping_add(1);
                    removed.push((*id, c.clock));
                }
            }
        }
        removed
    }

    /// The live states, for a client that joins or asks.
    pub fn live(&self) -> impl ExactSizeIterator<Item = AwarenessEntry<'_>> {
        let live: Vec<AwarenessEntry<'_>> = self
            .clients
            .iter()
            .filter_map(|(id, c)| {
                c.state.as_deref().map(|state| AwarenessEntry {
                    client_id: *id,
                    clock: c.clock,
                    state,
                })
            })
            .collect();
        live.into_iter()
    }

    pub fn live_count(&self) -> usize {
        self.clients.values().filter(|c| c.state.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::protocol::{decode, encode_awareness, Message};
    use crate::sync::update_check::UpdateLimits;

    fn apply(
        a: &mut AwarenessStates,
        owned: &mut Vec<u64>,
        entries: &[(u64, u32, &str)],
    ) -> Result<bool, AwarenessError> {
        let msg =
            encode_awareness(
                entries
                    .iter()
                    .map(|&(client_id, clock, state)| AwarenessEntry {
                        client_id,
                        clock,
                        state,
                    }),
            );
        let Message::Awareness(e) = decode(&msg, &UpdateLimits::default()).unwrap() else {
            panic!()
        };
        a.apply(&e, owned, 4)
    }

    #[test]
    fn newer_clocks_win_and_stale_ones_are_ignored() {
        let mut a = AwarenessStates::new(100, 1 << 10);
        let mut owned = Vec::new();
        assert_eq!(apply(&mut a, &mut owned, &[(1, 1, "{\"a\":1}")]), Ok(true));
        assert_eq!(apply(&mut a, &mut owned, &[(1, 1, "{\"a\":2}")]), Ok(false));
        assert_eq!(apply(&mut a, &mut owned, &[(1, 2, "{\"a\":3}")]), Ok(true));
        assert_eq!(a.live().next().unwrap().state, "{\"a\":3}");
        // Same clock, removal: wins.
        assert_eq!(apply(&mut a, &mut owned, &[(1, 2, "null")]), Ok(true));
        assert_eq!(a.live_count(), 0);
        assert_eq!(owned, vec![1]);
    }

    #[test]
    fn leaving_removes_owned_states_with_a_bumped_clock() {
        let mut a = AwarenessStates::new(100, 1 << 10);
        let mut owned = Vec::new();
        apply(&mut a, &mut owned, &[(7, 5, "{}")]).unwrap();
        assert_eq!(a.remove(&owned), vec![(7, 6)]);
        assert_eq!(a.remove(&owned), vec![]);
        // A stale re-add at the old clock is refused.
        assert_eq!(apply(&mut a, &mut Vec::new(), &[(7, 5, "{}")]), Ok(false));
    }

    #[test]
    fn bounds_per_connection_and_per_room() {
        let mut a = AwarenessStates::new(100, 1 << 10);
        let mut owned = Vec::new();
        let many: Vec<(u64, u32, &str)> = (0..5).map(|i| (i, 1, "{}")).collect();
        assert_eq!(
            apply(&mut a, &mut owned, &many),
            Err(AwarenessError::TooManyClientsForConnection)
        );

        let mut a = AwarenessStates::new(2, 1 << 10);
        apply(&mut a, &mut Vec::new(), &[(1, 1, "{}")]).unwrap();
        apply(&mut a, &mut Vec::new(), &[(2, 1, "{}")]).unwrap();
        assert_eq!(
            apply(&mut a, &mut Vec::new(), &[(3, 1, "{}")]),
            Err(AwarenessError::TooManyClientsForRoom)
        );
        // Once one is removed, its slot can be reused.
        a.remove(&[1]);
        assert_eq!(apply(&mut a, &mut Vec::new(), &[(3, 1, "{}")]), Ok(true));
    }

    #[test]
    fn a_refused_update_leaves_no_state_behind() {
        // The connection's 5th client id: refused, and the 4 before it in the update are not
        // kept either (they would belong to no connection and never be removed).
        let mut a = AwarenessStates::new(100, 1 << 10);
        let mut owned = Vec::new();
        let five: Vec<(u64, u32, &str)> = (0..5).map(|i| (i, 1, "{}")).collect();
        assert_eq!(
            apply(&mut a, &mut owned, &five),
            Err(AwarenessError::TooManyClientsForConnection)
        );
        assert_eq!((a.live_count(), owned.len()), (0, 0));
        // A full room: nothing of a refused update is kept.
        let mut a = AwarenessStates::new(3, 1 << 10);
        apply(&mut a, &mut Vec::new(), &[(1, 1, "{}"), (2, 1, "{}")]).unwrap();
        let mut owned = Vec::new();
        assert_eq!(
            apply(&mut a, &mut owned, &[(3, 1, "{}"), (4, 1, "{}")]),
            Err(AwarenessError::TooManyClientsForRoom)
        );
        assert_eq!((a.live_count(), owned.len()), (2, 0));
    }

    #[test]
    fn a_client_named_twice_in_one_update_is_refused() {
        let mut a = AwarenessStates::new(100, 1 << 10);
        let mut owned = Vec::new();
        assert_eq!(
            apply(&mut a, &mut owned, &[(1, 1, "{}"), (1, 2, "{}")]),
            Err(AwarenessError::RepeatedClient)
        );
        assert_eq!(a.live_count(), 0);
    }

    #[test]
    fn a_full_room_forgets_removed_clients_but_not_those_the_update_names() {
        let mut a = AwarenessStates::new(2, 1 << 10);
        let mut owned = Vec::new();
        apply(&mut a, &mut owned, &[(1, 1, "{}"), (2, 1, "{}")]).unwrap();
        a.remove(&[1, 2]);
        // Client 3 is new and takes a removed client's place; client 2, removed, comes back
        // in the same update and keeps its own.
        let mut owned = Vec::new();
        assert_eq!(
            apply(&mut a, &mut owned, &[(3, 1, "{}"), (2, 3, "{}")]),
            Ok(true)
        );
        assert_eq!(a.live_count(), 2);
    }

    #[test]
    fn a_state_over_the_bound_is_refused_and_nothing_of_its_update_is_kept() {
        let mut a = AwarenessStates::new(100, 16);
        let mut owned = Vec::new();
        let at_bound = format!("\"{}\"", "x".repeat(14));
        let over = format!("\"{}\"", "x".repeat(15));
        assert_eq!(apply(&mut a, &mut owned, &[(1, 1, &at_bound)]), Ok(true));
        assert_eq!(
            apply(&mut a, &mut owned, &[(2, 1, "{}"), (1, 2, &over)]),
            Err(AwarenessError::StateTooLarge)
        );
        assert_eq!(a.live_count(), 1, "client 2 was not added");
        assert_eq!(a.live().next().unwrap().state, at_bound);
    }
}

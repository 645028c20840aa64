//! Byte budgets for replies: what a connection, and the node as a whole, may hold.
//!
//! A reply holds a [`Reservation`] of its bytes from the moment its size is known (for a
//! fetch: before it reads anything, so the budget decides how much it reads) until the writer
//! has handed it to the socket. A client that does not read its replies therefore stops its
//! own connection, and a node full of such clients shrinks fetches instead of growing.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bounded number of bytes, lent out in reservations.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    capacity: u32,
}

/// Bytes of one reply taken from one or more budgets (the same bytes from each), given back
/// when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    /// The reply bytes this reservation covers.
    bytes: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Reservation {
    /// The reply bytes covered (held in each budget the reservation draws on).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back everything above `bytes` (of each budget), keeping at most `bytes`.
    fn shrink_each_to(&mut self, bytes: usize) {
        for permit in &mut self.permits {
            let excess = permit.num_permits().saturating_sub(bytes);
            if excess > 0 {
                drop(permit.split(excess));
            }
        }
        self.bytes = self.bytes.min(bytes);
    }
}

impl ByteBudget {
    pub fn new(capacity: u32) -> ByteBudget {
        assert!(
            capacity > 0,
            "a budget of zero bytes would hold every reply forever"
        );
        ByteBudget {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Bytes not lent out right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Takes exactly `bytes` (at most the whole budget), waiting until they are free.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let wanted = clamp(bytes, self.capacity);
        if wanted == 0 {
            return Reservation::default();
        }
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(wanted)
            .await
            .expect("budget semaphores are never closed");
        Reservation {
            bytes: wanted as usize,
            permits: vec![permit],
        }
    }

    /// Takes as much of `wanted` bytes as is free right now, but at least `floor` of them:
    /// with fewer than `floor` free it waits for `floor` (both capped at the whole budget).
    pub async fn reserve_up_to(&self, wanted: usize, floor: usize) -> Reservation {
        let wanted = clamp(wanted, self.capacity);
        let floor = clamp(floor, self.capacity).min(wanted).max(1);
        let free = clamp(self.available(), wanted);
        if free >= floor {
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_many_owned(free) {
                return Reservation {
                    bytes: free as usize,
                    permits: vec![permit],
                };
            }
        }
        // Nothing (or too little) is free: wait in line for the floor; the semaphore is fair,
        // so a waiting fetch is not overtaken by later, smaller ones.
        self.reserve(floor as usize).await
    }

    /// Resolves once at least one byte is free (in turn with every reservation that waits).
    pub async fn until_not_exhausted(&self) {
        let _one = self.reserve(1).await;
    }
}

fn clamp(bytes: usize, capacity: u32) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX).min(capacity)
}

/// The budgets a fetch reply draws on: its connection's, its source address's share of the
/// node's, and the node's.
#[derive(Debug, Clone)]
pub struct FetchBudgets {
    pub connection: ByteBudget,
    pub address: ByteBudget,
    pub node: ByteBudget,
}

impl FetchBudgets {
    /// Reserves up to `wanted` bytes from every budget, at least `floor` (both capped at
    /// the smallest budget), always in the same order so that no two fetches wait for each
    /// other: first the connection (only its own client can keep it full), then the address
    /// (only its own connections), then the node. The reservation is the smallest grant.
    pub async fn reserve(&self, wanted: usize, floor: usize) -> Reservation {
        let mut reservation = self.connection.reserve_up_to(wanted, floor).await;
        for budget in [&self.address, &self.node] {
            let granted = reservation.bytes();
            let more = budget.reserve_up_to(granted, floor.min(granted)).await;
            let granted = more.bytes();
            reservation.permits.extend(more.permits);
            reservation.shrink_each_to(granted);
        }
        reservation
    }
}

/// Adjusts a reservation to the real size of the reply it was made for: what was not used
/// goes back. A reply with no reservation waits for its bytes of `connection` (it holds no
/// budget meanwhile, so it cannot hold up the replies it waits for). A reply larger than its
/// reservation (an estimate of its envelope fell short) takes the rest only if it is free:
/// waiting while holding budget could leave every reply of a connection waiting for the
/// others (the hostile-client probe found that deadlock).
pub async fn settle(
    mut reservation: Reservation,
    connection: &ByteBudget,
    size: usize,
) -> Reservation {
    if reservation.permits.is_empty() {
        return connection.reserve(size).await;
    }
    if reservation.bytes >= size {
        reservation.shrink_each_to(size);
    } else {
        let missing = clamp(size - reservation.bytes, connection.capacity);
        if let Ok(extra) = Arc::clone(&connection.permits).try_acquire_many_owned(missing) {
            reservation.permits.push(extra);
            reservation.bytes = size;
        }
    }
    reservation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_shrinks_to_what_is_free_and_returns_on_drop() {
        let budget = ByteBudget::new(100);
        let first = budget.reserve_up_to(70, 10).await;
        assert_eq!(first.bytes(), 70);
        let second = budget.reserve_up_to(70, 10).await;
        assert_eq!(second.bytes(), 30);
        assert_eq!(budget.available(), 0);
        drop(first);
        assert_eq!(budget.available(), 70);
        drop(second);
        assert_eq!(budget.available(), 100);
        // Asking for more than the whole budget gets the whole budget, never a deadlock.
        assert_eq!(budget.reserve(1_000).await.bytes(), 100);
    }

    #[tokio::test]
    async fn below_the_floor_a_reservation_waits() {
        let budget = ByteBudget::new(100);
        let held = budget.reserve(95).await;
        let waiting = budget.reserve_up_to(50, 10);
        tokio::pin!(waiting);
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), waiting.as_mut());
        assert!(early.await.is_err(), "5 bytes free: below the floor of 10");
        drop(held);
        assert_eq!(waiting.await.bytes(), 10);
    }

    #[tokio::test]
    async fn fetch_budgets_take_the_smaller_share_and_settle_to_the_reply() {
        let budgets = FetchBudgets {
            connection: ByteBudget::new(100),
            address: ByteBudget::new(1_000),
            node: ByteBudget::new(1_000),
        };
        let _other = budgets.node.reserve(960).await;
        let reservation = budgets.reserve(80, 10).await;
        assert_eq!(reservation.bytes(), 40);
        assert_eq!(budgets.connection.available(), 60);
        let reservation = settle(reservation, &budgets.connection, 25).await;
        assert_eq!(budgets.connection.available(), 75);
        assert_eq!(budgets.node.available(), 15);
        let reservation = settle(reservation, &budgets.connection, 45).await;
        assert_eq!(budgets.connection.available(), 55);
        drop(reservation);
        assert_eq!(budgets.connection.available(), 100);
        assert_eq!(budgets.node.available(), 40);
    }

    /// Connections of one address share its part of the node budget: a second connection of the
    /// same address gets only what the first left, one of another address the rest of the node's.
    #[tokio::test]
    async fn an_address_holds_at_most_its_share_of_the_node_budget() {
        let node = ByteBudget::new(1_000);
        let crowded = ByteBudget::new(300);
        let budgets = |address: &ByteBudget| FetchBudgets {
            connection: ByteBudget::new(200),
            address: address.clone(),
            node: node.clone(),
        };
        let first = budgets(&crowded).reserve(200, 10).await;
        let second = budgets(&crowded).reserve(200, 10).await;
        assert_eq!((first.bytes(), second.bytes()), (200, 100));
        let third_budgets = budgets(&crowded);
        let third = third_budgets.reserve(200, 10);
        tokio::pin!(third);
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), third.as_mut());
        assert!(early.await.is_err(), "the address's share is used up");
        let other = budgets(&ByteBudget::new(300)).reserve(200, 10).await;
        assert_eq!(other.bytes(), 200, "another address is not held up");
        assert_eq!(node.available(), 1_000 - 500);
        drop(first);
        // A fetch that waited takes its floor, as it would from any one budget.
        assert_eq!(third.await.bytes(), 10);
        drop((second, other));
    }

    /// Every reply of a connection outgrowing its reservation at once must not leave each
    /// waiting for another's bytes (a deadlock the hostile-client probe found).
    #[tokio::test]
    async fn a_reply_larger_than_its_reservation_never_waits() {
        let connection = ByteBudget::new(100);
        let first = connection.reserve(50).await;
        let second = connection.reserve(50).await;
        let first = settle(first, &connection, 70).await;
        let second = settle(second, &connection, 70).await;
        assert_eq!((first.bytes(), second.bytes()), (50, 50));
        drop((first, second));
        // With room, the rest is taken.
        let third = settle(connection.reserve(50).await, &connection, 70).await;
        assert_eq!(third.bytes(), 70);
        assert_eq!(connection.available(), 30);
        // A reply without a reservation waits for its bytes.
        let fourth = settle(Reservation::default(), &connection, 30).await;
        assert_eq!(connection.available(), 0);
        drop((third, fourth));
        assert_eq!(connection.available(), 100);
    }
}

//! Invariants with stable ids, asserted after every step and reused by the chaos checker.

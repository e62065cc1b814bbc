//! Interface and neighbour lookups through rtnetlink.

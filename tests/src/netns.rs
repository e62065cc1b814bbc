//! Network namespaces for real-traffic tests (filled in below).

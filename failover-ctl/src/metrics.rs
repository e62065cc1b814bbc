//! Prometheus text exposition of the daemon's status.

//! Both programs load and pass the verifier (root only).
use failover_ctl::loader::{Dataplane, Decap, LoadOptions};

#[test]
fn programs_pass_the_verifier() {
    if !netlab::prerequisite::root("loads BPF programs") {
        return;
    }
    let dataplane = Dataplane::load(LoadOptions { table_pool_slots: 1 << 16, flow_entries: 1024 });
    if let Err(e) = &dataplane { eprintln!("{e:#?}"); }
    dataplane.unwrap();
    Decap::load().unwrap();
}

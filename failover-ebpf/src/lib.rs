//! Code shared by the load-balancer and decap XDP programs: header layouts, bounds-checked
//! packet access, L2 header moves, verdicts and the parser. No maps live here: each program
//! declares its own in its `maps.rs`, so loading one never creates the other's maps.
#![no_std]

pub mod headers;
pub mod l2;
pub mod packet;
pub mod parse;
pub mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

//! What the garbage collector reads from stored manifests (bytes a client pushed): no input panics, the answer
//! is the same for the same input, every digest is a valid one, and foreign layers are among the blobs.
#![no_main]

use berth_registry::oci::Digest;
use berth_registry::store::gc::references;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = references(data);
    let again = references(data);
    assert_eq!(r.blobs, again.blobs);
    assert_eq!(r.children, again.children);
    assert_eq!(r.subject, again.subject);
    for d in r.blobs.iter().chain(&r.children).chain(r.subject.iter()) {
        assert_eq!(Digest::parse(&d.to_string()).as_ref(), Ok(d));
    }
    for f in &r.foreign {
        assert!(r.blobs.contains(f), "foreign layer {f} not among the blobs");
    }
});

//! A failed password check takes the same time whatever the user's hash, so timing does not tell which names
//! exist (a file with users at bcrypt cost 5 and one at cost 10, as after a migration plus `user add`). In a
//! test binary of its own, so that no other test loads the machine while it measures.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proxy::authn::{AuthFailure, AuthLimits, Authenticator};
use common::{basic, htpasswd};

#[test]
fn a_failed_check_takes_the_same_time_whatever_the_user_s_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let p = path.to_str().unwrap();
    htpasswd(&["-cbB", "-C", "5", p, "cheap1", "pw1"]);
    htpasswd(&["-bB", "-C", "5", p, "cheap2", "pw2"]);
    htpasswd(&["-bB", "-C", "10", p, "dear", "pw3"]);
    let limits = AuthLimits {
        client_failures: u32::MAX,
        per_client: usize::MAX,
        // Timing of checks, not their throttling, is measured here (tests/access.rs has the throttling).
        user_failures: u32::MAX,
        ..Default::default()
    };
    let auth = Arc::new(Authenticator::with_limits(
        path.clone(),
        Duration::from_secs(60),
        1000,
        limits,
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let users = ["cheap1", "nobody", "dear"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); users.len()];
    // Interleaved rounds, so that whatever else the machine does weighs on every case alike.
    for round in 0..11 {
        for (i, user) in users.iter().enumerate() {
            let header = basic(user, &format!("wrong-{round}"));
            let t = Instant::now();
            let r = rt.block_on(auth.authenticate(Some(header.as_bytes())));
            assert_eq!(r, Err(AuthFailure::Rejected));
            times[i].push(t.elapsed());
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    let (cheap, unknown, dear) = (medians[0], medians[1], medians[2]);
    println!("median failed check: cost-5 user {cheap:?}, unknown name {unknown:?}, cost-10 user {dear:?}");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    for (what, r) in [
        ("cost-5 user / unknown name", ratio(cheap, unknown)),
        ("cost-10 user / unknown name", ratio(dear, unknown)),
    ] {
        // Unpadded, a cost-5 user answers about 30 times sooner than a cost-10 one.
        assert!(
            (0.7..1.4).contains(&r),
            "{what}: {r:.2} (cost-5 {cheap:?}, unknown {unknown:?}, cost-10 {dear:?})"
        );
    }
}

//! The storage conformance suite: `pub async fn` checks that every backend must pass.
//!
//! Each check uses its own prefix and removes what it wrote, so the backend is left clean. Checks panic with
//! a message naming the broken rule.

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::Storage;

async fn collect(s: &dyn Storage, key: &str, range: Option<(u64, u64)>) -> Vec<u8> {
    let stream = s.read(key, range).await.expect("read");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read stream");
    chunks.concat()
}

/// Runs every check.
pub async fn run_all(s: &dyn Storage) {
    put_then_read(s).await;
    absent_objects(s).await;
    ranged_reads(s).await;
    large_streamed_object(s).await;
    append_and_resume(s).await;
    rename_replaces(s).await;
    list_children(s).await;
    delete_prefix(s).await;
    empty_objects(s).await;
    concurrent_puts_are_atomic(s).await;
    create_only_when_absent(s).await;
    walk_finds_every_object(s).await;
    delete_batch_removes_objects_and_folders(s).await;
}

/// `put` then `read`, `read_small` and `stat` return what was written; a second `put` replaces it.
pub async fn put_then_read(s: &dyn Storage) {
    let k = "conf-put/a/b/data";
    s.put(k, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(collect(s, k, None).await, b"hello");
    assert_eq!(s.read_small(k, 100).await.unwrap(), &b"hello"[..]);
    assert_eq!(s.stat(k).await.unwrap().map(|m| m.size), Some(5));
    s.put(k, Bytes::from_static(b"bye")).await.unwrap();
    assert_eq!(collect(s, k, None).await, b"bye", "put must replace");
    assert!(
        s.read_small(k, 2).await.is_err(),
        "read_small must refuse objects over the limit"
    );
    s.delete("conf-put").await.unwrap();
}

/// Absent objects: `stat` is `None`, `read` is `NotFound`, `list` is empty, `delete` succeeds.
pub async fn absent_objects(s: &dyn Storage) {
    assert_eq!(s.stat("conf-absent/x").await.unwrap(), None);
    match s.read("conf-absent/x", None).await {
        Err(e) => assert!(
            e.is_not_found(),
            "read of absent object must be NotFound, got {e}"
        ),
        Ok(_) => panic!("read of absent object must fail"),
    }
    assert!(s
        .read_small("conf-absent/x", 10)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s.list("conf-absent").await.unwrap().is_empty());
    s.delete("conf-absent/x").await.unwrap();
    s.delete("conf-absent").await.unwrap();
}

/// Ranged reads return exactly the range; a range past the end is refused.
pub async fn ranged_reads(s: &dyn Storage) {
    let k = "conf-range/data";
    let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    s.put(k, Bytes::from(body.clone())).await.unwrap();
    assert_eq!(collect(s, k, Some((0, 1))).await, &body[0..1]);
    assert_eq!(collect(s, k, Some((100, 9_000))).await, &body[100..9_000]);
    assert_eq!(collect(s, k, Some((9_999, 10_000))).await, &body[9_999..]);
    assert!(collect(s, k, Some((10_000, 10_000))).await.is_empty());
    assert!(
        s.read(k, Some((5, 10_001))).await.is_err(),
        "range past the end must fail"
    );
    s.delete("conf-range").await.unwrap();
}

/// An object bigger than any internal buffer streams back whole, in several chunks.
pub async fn large_streamed_object(s: &dyn Storage) {
    let k = "conf-large/data";
    let mut w = s.append(k).await.unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for _ in 0..5 {
        w.write(Bytes::from(chunk.clone())).await.unwrap();
    }
    assert_eq!(w.size(), 5 * 1024 * 1024);
    w.finish().await.unwrap();
    let mut stream = s.read(k, None).await.unwrap();
    let (mut total, mut chunks) = (0usize, 0usize);
    while let Some(c) = stream.try_next().await.unwrap() {
        assert!(
            c.len() <= 4 * 1024 * 1024,
            "a read chunk must not hold the whole object"
        );
        total += c.len();
        chunks += 1;
    }
    assert_eq!(total, 5 * 1024 * 1024);
    assert!(chunks > 1);
    s.delete("conf-large").await.unwrap();
}

/// Appends accumulate; a new writer on the same object resumes at its end.
pub async fn append_and_resume(s: &dyn Storage) {
    let k = "conf-append/u/data";
    let mut w = s.append(k).await.unwrap();
    assert_eq!(w.size(), 0);
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.write(Bytes::from_static(b"def")).await.unwrap();
    w.finish().await.unwrap();
    let mut w = s.append(k).await.unwrap();
    assert_eq!(w.size(), 6, "a resumed writer starts at the end");
    w.write(Bytes::from_static(b"g")).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(collect(s, k, None).await, b"abcdefg");
    s.delete("conf-append").await.unwrap();
}

/// `rename` moves an object and replaces the destination.
pub async fn rename_replaces(s: &dyn Storage) {
    s.put("conf-rename/src", Bytes::from_static(b"new"))
        .await
        .unwrap();
    s.put("conf-rename/x/dst", Bytes::from_static(b"old"))
        .await
        .unwrap();
    s.rename("conf-rename/src", "conf-rename/x/dst")
        .await
        .unwrap();
    assert_eq!(s.stat("conf-rename/src").await.unwrap(), None);
    assert_eq!(collect(s, "conf-rename/x/dst", None).await, b"new");
    s.put("conf-rename/src2", Bytes::from_static(b"n2"))
        .await
        .unwrap();
    s.rename("conf-rename/src2", "conf-rename/fresh/dir/dst")
        .await
        .unwrap();
    assert_eq!(collect(s, "conf-rename/fresh/dir/dst", None).await, b"n2");
    s.delete("conf-rename").await.unwrap();
}

/// `list` gives direct children (objects and prefixes) sorted, nothing deeper.
pub async fn list_children(s: &dyn Storage) {
    for k in [
        "conf-list/b/x",
        "conf-list/a",
        "conf-list/c/d/e",
        "conf-list/b/y",
    ] {
        s.put(k, Bytes::from_static(b"1")).await.unwrap();
    }
    assert_eq!(s.list("conf-list").await.unwrap(), vec!["a", "b", "c"]);
    assert_eq!(s.list("conf-list/b").await.unwrap(), vec!["x", "y"]);
    assert_eq!(s.list("conf-list/c").await.unwrap(), vec!["d"]);
    s.delete("conf-list").await.unwrap();
}

/// `delete` of a prefix removes everything under it and nothing beside it.
pub async fn delete_prefix(s: &dyn Storage) {
    s.put("conf-del/keep", Bytes::from_static(b"1"))
        .await
        .unwrap();
    s.put("conf-del/gone/a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    s.put("conf-del/gone/b/c", Bytes::from_static(b"1"))
        .await
        .unwrap();
    s.delete("conf-del/gone").await.unwrap();
    assert_eq!(s.list("conf-del").await.unwrap(), vec!["keep"]);
    assert_eq!(s.stat("conf-del/gone/b/c").await.unwrap(), None);
    s.delete("conf-del").await.unwrap();
    assert!(s.list("conf-del").await.unwrap().is_empty());
}

/// Zero-byte objects exist and read back empty.
pub async fn empty_objects(s: &dyn Storage) {
    s.put("conf-empty/a", Bytes::new()).await.unwrap();
    assert_eq!(
        s.stat("conf-empty/a").await.unwrap().map(|m| m.size),
        Some(0)
    );
    assert!(collect(s, "conf-empty/a", None).await.is_empty());
    let w = s.append("conf-empty/b").await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(
        s.stat("conf-empty/b").await.unwrap().map(|m| m.size),
        Some(0)
    );
    s.delete("conf-empty").await.unwrap();
}

/// Concurrent `put`s of one key leave one whole value, never a mix.
pub async fn concurrent_puts_are_atomic(s: &dyn Storage) {
    let k = "conf-conc/link";
    let a = Bytes::from(vec![b'a'; 100_000]);
    let b = Bytes::from(vec![b'b'; 100_000]);
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(s.put(k, a.clone()), s.put(k, b.clone()));
        ra.unwrap();
        rb.unwrap();
        let got = collect(s, k, None).await;
        assert!(
            got == a || got == b,
            "concurrent puts produced a mixed object"
        );
    }
    assert_eq!(
        s.list("conf-conc").await.unwrap(),
        vec!["link"],
        "no temporary file may be listed"
    );
    s.delete("conf-conc").await.unwrap();
}

/// `create` writes only where nothing is; of concurrent creators exactly one wins, and the object is whole.
pub async fn create_only_when_absent(s: &dyn Storage) {
    let k = "conf-create/lease";
    assert!(s.create(k, Bytes::from_static(b"first")).await.unwrap());
    assert!(!s.create(k, Bytes::from_static(b"second")).await.unwrap());
    assert_eq!(s.read_small(k, 100).await.unwrap(), &b"first"[..]);
    s.delete(k).await.unwrap();
    for round in 0..3 {
        let k = format!("conf-create/race{round}");
        let results = futures_util::future::join_all(
            (0..4u8).map(|i| s.create(&k, Bytes::from(vec![b'a' + i; 10_000]))),
        )
        .await;
        let won: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| *r.as_ref().unwrap())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(won.len(), 1, "exactly one concurrent create must win");
        let got = s.read_small(&k, 100_000).await.unwrap();
        assert_eq!(got, vec![b'a' + won[0] as u8; 10_000], "the winner's bytes");
    }
    assert_eq!(
        s.list("conf-create").await.unwrap(),
        vec!["race0", "race1", "race2"],
        "no temporary file may be listed"
    );
    s.delete("conf-create").await.unwrap();
}

/// `walk` finds every object under a prefix, at any depth, with its size and a modification time, and
/// nothing beside the prefix.
pub async fn walk_finds_every_object(s: &dyn Storage) {
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    let mut want = Vec::new();
    for i in 0..300 {
        let k = format!("conf-walk/in/{}/{i}/link", i % 7);
        s.put(&k, Bytes::from(vec![b'x'; i % 5])).await.unwrap();
        want.push((k, (i % 5) as u64));
    }
    s.put("conf-walk/in-not/x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    s.put("conf-walk/inx", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let mut got: Vec<(String, u64)> = s
        .walk("conf-walk/in")
        .map_ok(|(k, m)| {
            let t = m.modified.expect("walk must give modification times");
            assert!(t >= before, "{k}: modification time {t:?} in the past");
            (k, m.size)
        })
        .try_collect()
        .await
        .unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let mut w = s.append("conf-walk/appended").await.unwrap();
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.finish().await.unwrap();
    let t = s
        .stat("conf-walk/appended")
        .await
        .unwrap()
        .and_then(|m| m.modified);
    assert!(
        t.is_some_and(|t| t >= before),
        "stat of an append object must give its modification time: {t:?}"
    );
    let absent: Vec<(String, super::ObjectMeta)> =
        s.walk("conf-walk/none").try_collect().await.unwrap();
    assert!(absent.is_empty(), "an absent prefix walks as empty");
    s.delete("conf-walk").await.unwrap();
}

/// `delete_batch` removes exact objects and whole folders, leaves everything else, takes absent keys in its
/// stride, and leaves no empty folder of a removed single object behind.
pub async fn delete_batch_removes_objects_and_folders(s: &dyn Storage) {
    for k in [
        "conf-batch/a/x/link",
        "conf-batch/a/y/link",
        "conf-batch/b/folder/one",
        "conf-batch/b/folder/sub/two",
        "conf-batch/b/keep",
    ] {
        s.put(k, Bytes::from_static(b"1")).await.unwrap();
    }
    for durable in [true, false] {
        s.delete_batch(
            &[
                "conf-batch/a/x/link".to_string(),
                "conf-batch/b/folder".to_string(),
                "conf-batch/absent/link".to_string(),
            ],
            durable,
        )
        .await
        .unwrap();
    }
    assert_eq!(s.list("conf-batch/a").await.unwrap(), vec!["y"]);
    assert_eq!(s.list("conf-batch/b").await.unwrap(), vec!["keep"]);
    assert_eq!(s.stat("conf-batch/b/folder/sub/two").await.unwrap(), None);
    s.delete("conf-batch").await.unwrap();
}

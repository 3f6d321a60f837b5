//! What the shared metadata cache reads from Redis: RESP replies and the values it stored. No input panics; a
//! reply never claims more bytes than it was given, and the bytes it took parse to the same reply; a bulk
//! string holds at most the limit; any bytes encoded as a bulk string parse back to exactly those bytes
//! (however many CRLFs they hold) and consume exactly their encoding; a stored value that decodes encodes to
//! something that decodes to the same value.
#![no_main]

use berth_registry::cache::Value;
use berth_registry::redis::{parse_reply, Reply};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Ok((reply, used)) = parse_reply(data).await {
            assert!(used <= data.len());
            if let Reply::Data(b) = &reply {
                assert!(b.len() <= LIMIT);
            }
            let again = parse_reply(&data[..used])
                .await
                .expect("the same bytes parse");
            assert_eq!(again, (reply, used));
        }
        let mut encoded = format!("${}\r\n", data.len()).into_bytes();
        encoded.extend_from_slice(data);
        encoded.extend_from_slice(b"\r\n");
        let mut stream = encoded.clone();
        stream.extend_from_slice(b"+OK\r\n");
        match parse_reply(&stream).await {
            Ok((Reply::Data(b), used)) => {
                assert_eq!(&b[..], data);
                assert_eq!(used, encoded.len());
            }
            Err(_) if data.len() > LIMIT => {}
            other => panic!("a bulk string of {} bytes: {other:?}", data.len()),
        }
    });
    if let Some(v) = Value::decode(&Bytes::copy_from_slice(data)) {
        assert_eq!(Value::decode(&Bytes::from(v.encode())), Some(v));
    }
});

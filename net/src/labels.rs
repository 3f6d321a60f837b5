//! Label values both processes' metrics share, and the table of series handles they look up by index on the
//! request path (instead of hashing label values at every request).

use std::sync::OnceLock;

/// The `method` label: lower case, as registry:2 writes it; anything unusual is `other`.
pub const METHODS: [&str; 8] = [
    "get", "head", "put", "post", "patch", "delete", "options", "other",
];

/// A method's position in [`METHODS`].
pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::PUT => 2,
        http::Method::POST => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// `n` empty slots for series handles, filled on first use.
pub fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_label() {
        assert_eq!(METHODS[method_index(&http::Method::PATCH)], "patch");
        assert_eq!(METHODS[method_index(&http::Method::CONNECT)], "other");
        assert_eq!(slots::<u8>(3).len(), 3);
    }
}

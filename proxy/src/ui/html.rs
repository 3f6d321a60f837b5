//! The one way the web interface writes HTML: markup is `&'static str` written in the code, and every other
//! piece of text goes through [`Html::t`], which escapes it. A repository name, a tag or an image label can
//! therefore never become markup.

use std::fmt::Write as _;

/// A page being written.
#[derive(Debug, Default)]
pub struct Html {
    out: String,
}

/// Escapes text for an element's content or a quoted attribute value.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

impl Html {
    /// An empty page.
    pub fn new() -> Html {
        Html {
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Markup, as written in the code.
    pub fn s(&mut self, markup: &'static str) -> &mut Html {
        self.out.push_str(markup);
        self
    }

    /// Text, escaped.
    pub fn t(&mut self, text: &str) -> &mut Html {
        escape(text, &mut self.out);
        self
    }

    /// A number.
    pub fn n(&mut self, n: u64) -> &mut Html {
        let _ = write!(self.out, "{n}");
        self
    }

    /// A query string value, percent-encoded (then escaped for the attribute it sits in).
    pub fn q(&mut self, value: &str) -> &mut Html {
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        escape(&encoded, &mut self.out);
        self
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A size in bytes for people: `512 B`, `1.5 KiB`, `23.4 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// A moment as `2026-12-01 06:10 UTC`.
pub fn absolute_time(unix: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
    else {
        return unix.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// A moment as RFC 3339, for `<time datetime>`.
pub fn iso_time(unix: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
    else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long ago `unix` was, seen at `now`: `just now`, `5 minutes ago`, `3 days ago`.
pub fn relative_time(unix: u64, now: u64) -> String {
    if unix > now {
        return "in the future".into();
    }
    let d = now - unix;
    let (n, unit) = match d {
        0..=59 => return "just now".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=2_591_999 => (d / 86_400, "day"),
        2_592_000..=31_535_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A time that reads both ways: relative, with the absolute time beside it.
pub fn time(h: &mut Html, unix: Option<u64>, now: u64) {
    let Some(unix) = unix else {
        h.s("<span class=\"muted\">unknown</span>");
        return;
    };
    h.s("<time datetime=\"")
        .t(&iso_time(unix))
        .s("\" title=\"")
        .t(&absolute_time(unix))
        .s("\">")
        .t(&relative_time(unix, now))
        .s("</time> <span class=\"abs\">")
        .t(&absolute_time(unix))
        .s("</span>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_markup_is_not() {
        let mut h = Html::new();
        h.s("<b>")
            .t("<script>alert('x')</script> & \"q\"")
            .s("</b>");
        assert_eq!(
            h.finish(),
            "<b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</b>"
        );
        let mut h = Html::new();
        h.q("a b&c=\"d\"");
        assert_eq!(h.finish(), "a+b%26c%3D%22d%22");
    }

    #[test]
    fn sizes_and_times_for_people() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(25 * 1024 * 1024), "25 MiB");
        assert_eq!(absolute_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(iso_time(86_400 + 61), "1970-01-02T00:01:01Z");
        assert_eq!(relative_time(100, 100), "just now");
        assert_eq!(relative_time(0, 120), "2 minutes ago");
        assert_eq!(relative_time(0, 3600), "1 hour ago");
        assert_eq!(relative_time(0, 86_400 * 3), "3 days ago");
    }
}

//! The protocol's lines: space-separated words, each URL-encoded (as
//! Python's `urllib.parse.quote`: everything but letters, digits, `_.-~/`).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

const QUOTED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');

/// URL-encodes one word.
pub fn encode(word: &str) -> String {
    utf8_percent_encode(word, QUOTED).to_string()
}

/// Decodes one URL-encoded word; invalid UTF-8 is replaced, as Python does.
pub fn decode(word: &str) -> String {
    percent_decode_str(word).decode_utf8_lossy().into_owned()
}

/// One line of encoded words, without the newline.
pub fn line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| encode(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The decoded words of a line.
pub fn parse(line: &str) -> Vec<String> {
    line.split_whitespace().map(decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_python_quote() {
        assert_eq!(encode("/tmp/a b/ü,x=y"), "/tmp/a%20b/%C3%BC%2Cx%3Dy");
        assert_eq!(encode("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(decode("/tmp/a%20b/%C3%BC%2Cx%3Dy"), "/tmp/a b/ü,x=y");
        assert_eq!(
            parse(" ok  a%20b\tc\n"),
            ["ok", "a b", "c"].map(String::from)
        );
        assert_eq!(line(&["copydown", "/a b", "x"]), "copydown /a%20b x");
    }
}

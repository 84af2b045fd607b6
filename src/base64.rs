//! Base64 (RFC 4648): the standard alphabet, padded, for Basic credentials and manifest bytes
//! kept in JSON entries; the URL alphabet, unpadded, for the parts of the tokens the proxy
//! signs (JWT).

const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Each byte's value in the standard alphabet; `INVALID` for the rest. A table: decoding is
/// on the path of every manifest answered from the store.
const INVALID: u8 = 0xff;
const VALUES: [u8; 256] = {
    let mut v = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        v[T[i] as usize] = i as u8;
        i += 1;
    }
    v
};

/// How many bytes `decode` gives for `input`, if it has the shape of standard base64 (the
/// characters themselves unchecked).
pub fn decoded_len(input: &str) -> Option<usize> {
    let b = input.as_bytes();
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    (b.len() % 4 == 0 && pad <= 2).then(|| b.len() / 4 * 3 - pad)
}

pub fn decode(input: &str) -> Option<Vec<u8>> {
    let input = input.as_bytes();
    if input.len() % 4 != 0 {
        return None;
    }
    let pad = input.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let quads = input.len() / 4;
    for (i, quad) in input.chunks_exact(4).enumerate() {
        let pad = if i + 1 == quads { pad } else { 0 };
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            let v = VALUES[c as usize];
            if v == INVALID {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// The URL-safe alphabet without padding (a JWT's parts).
pub fn encode_url(input: &[u8]) -> String {
    encode(input)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

pub fn decode_url(input: &str) -> Option<Vec<u8>> {
    if input.contains(['+', '/', '=']) {
        return None;
    }
    let mut standard: String = input
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while standard.len() % 4 != 0 {
        standard.push('=');
    }
    decode(&standard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoded_length_is_known_without_decoding() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let text = encode(bytes);
            assert_eq!(decoded_len(&text), Some(bytes.len()), "{text}");
        }
        assert_eq!(decoded_len("abc"), None);
        assert_eq!(decoded_len("a==="), None);
    }

    #[test]
    fn matches_rfc4648_both_ways() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("alice:s3cret", "YWxpY2U6czNjcmV0"),
        ] {
            assert_eq!(encode(i.as_bytes()), o);
            assert_eq!(decode(o).unwrap(), i.as_bytes());
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9!"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert_eq!(decode_url(&encode_url(&all)).unwrap(), all);
        assert_eq!(encode_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode_url("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_url("+/8="), None);
    }
}

//! The JOSE encodings both the token check and the issuer's key set read:
//! unpadded base64url segments and the JSON objects they carry.

use base64::Engine as _;

pub(super) fn base64url(segment: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()
}

pub(super) fn json_segment(segment: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(&base64url(segment)?).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

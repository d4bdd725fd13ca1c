#![allow(clippy::unwrap_used)]

use super::*;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// A 2048-bit RSA private key (PKCS#1 DER) made for these tests only.
const RSA_KEY: &[u8] = include_bytes!("../../../testdata/test-only-rsa-2048.der");

const AUD: &str = "kata-operator/agent";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signer and the JWK kube-apiserver would publish for it.
enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl Signer {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    fn rs256() -> Self {
        Self::Rs256(RsaKeyPair::from_der(RSA_KEY).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Es256(_) => "ES256",
            Self::Rs256(_) => "RS256",
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Self::Es256(key) => {
                let point = key.public_key().as_ref();
                json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                           "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Self::Rs256(key) => {
                let public: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
                json!({"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
                           "n": b64(&public.n), "e": b64(&public.e)})
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Es256(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Self::Rs256(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .unwrap();
                signature
            }
        }
    }

    /// A token with this header and these claims, signed by this key.
    fn token_with(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{signed}.{}", b64(&self.sign(signed.as_bytes())))
    }

    /// A token for [`AUD`] valid for an hour, with this header.
    fn token(&self, header: &serde_json::Value) -> String {
        self.token_with(header, &json!({"aud": [AUD], "exp": now() + 3600}))
    }
}

/// `token`'s header and claims, signed by a stranger's key.
fn signed_by_stranger(token: &str) -> String {
    let (signed, _) = token.rsplit_once('.').unwrap();
    let signature = Signer::es256().sign(signed.as_bytes());
    format!("{signed}.{}", b64(&signature))
}

fn keys(jwks: &[serde_json::Value]) -> IssuerKeys {
    IssuerKeys::parse(json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
}

/// A set publishing `signer`'s key as `k1`, and a genuine token of it.
fn published_with_token(signer: &Signer) -> (IssuerKeys, String) {
    let token = signer.token(&json!({"alg": signer.alg(), "kid": "k1"}));
    (keys(&[signer.jwk("k1")]), token)
}

#[test]
fn a_token_signed_by_a_published_key_verifies_and_any_other_is_forged() {
    for signer in [Signer::es256(), Signer::rs256()] {
        let alg = signer.alg();
        let (published, genuine) = published_with_token(&signer);
        assert_eq!(published.check(&genuine, AUD), Signature::Verified, "{alg}");

        let forged = signed_by_stranger(&genuine);
        assert_eq!(published.check(&forged, AUD), Signature::Forged, "{alg}");

        // A claim changed under a genuine signature.
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let widened = b64(json!({"aud": [AUD], "exp": now() + 7200})
            .to_string()
            .as_bytes());
        parts[1] = &widened;
        let widened = parts.join(".");
        assert_eq!(published.check(&widened, AUD), Signature::Forged, "{alg}");
    }
}

#[test]
fn an_algorithm_no_key_signs_with_is_forged_and_an_unknown_key_id_is_told_apart() {
    let signer = Signer::es256();
    let published = keys(&[signer.jwk("k1")]);
    // The token claims another algorithm than its key id's key signs with.
    for alg in ["RS256", "HS256", "none", "None", "ES384", ""] {
        let token = signer.token(&json!({"alg": alg, "kid": "k1"}));
        assert_eq!(published.check(&token, AUD), Signature::Forged, "{alg}");
    }
    let rotated = signer.token(&json!({"alg": "ES256", "kid": "k2"}));
    assert_eq!(published.check(&rotated, AUD), Signature::UnknownKey);
    // Without a key id, every key of the algorithm is tried.
    let unnamed = signer.token(&json!({"alg": "ES256"}));
    assert_eq!(published.check(&unnamed, AUD), Signature::Verified);
    // `alg: none` with an empty signature, as RFC 7519 writes it.
    let (unsigned, _) = unnamed.rsplit_once('.').unwrap();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        unsigned.split('.').nth(1).unwrap()
    );
    assert_eq!(published.check(&none, AUD), Signature::Forged);
}

#[test]
fn hs256_keyed_with_the_published_rsa_key_is_forged() {
    let signer = Signer::rs256();
    let Signer::Rs256(pair) = &signer else {
        unreachable!()
    };
    let published = keys(&[signer.jwk("k1")]);
    let public: RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
    // Whatever bytes of the public key an attacker takes as the secret.
    let secrets = [
        pair.public().as_ref().to_vec(),
        public.n.clone(),
        signer.jwk("k1").to_string().into_bytes(),
    ];
    for secret in secrets {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        for header in [
            json!({"alg": "HS256", "kid": "k1"}),
            json!({"alg": "HS256"}),
        ] {
            let claims = json!({"aud": [AUD], "exp": now() + 3600});
            let signed = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let mac = ring::hmac::sign(&key, signed.as_bytes());
            let token = format!("{signed}.{}", b64(mac.as_ref()));
            assert_eq!(published.check(&token, AUD), Signature::Forged, "{header}");
        }
    }
    // A set that publishes a symmetric key is refused that key.
    let oct = json!({"kty": "oct", "kid": "s", "alg": "HS256", "k": b64(b"secret")});
    assert!(IssuerKeys::parse(json!({"keys": [oct]}).to_string().as_bytes()).is_err());
}

#[test]
fn claims_are_held_to_the_audience_and_the_clock_with_a_minute_of_leeway() {
    let signer = Signer::rs256();
    let published = keys(&[signer.jwk("k1")]);
    let header = json!({"alg": "RS256", "kid": "k1"});
    let verdict =
        |claims: serde_json::Value| published.check(&signer.token_with(&header, &claims), AUD);
    let now = now();
    assert_eq!(
        verdict(json!({"aud": AUD, "exp": now + 600})),
        Signature::Verified
    );
    assert_eq!(
        verdict(json!({"aud": [AUD], "exp": now - 30})),
        Signature::Verified
    );
    assert_eq!(
        verdict(json!({"aud": [AUD], "exp": now - 120})),
        Signature::Refused
    );
    let not_yet = |nbf: u64| json!({"aud": [AUD], "exp": now + 600, "nbf": nbf});
    assert_eq!(verdict(not_yet(now + 30)), Signature::Verified);
    assert_eq!(verdict(not_yet(now + 120)), Signature::Refused);
    assert_eq!(
        verdict(json!({"aud": ["other"], "exp": now + 600})),
        Signature::Refused
    );
    assert_eq!(verdict(json!({"exp": now + 600})), Signature::Refused);
    assert_eq!(verdict(json!({"aud": [AUD]})), Signature::Refused);
    assert_eq!(
        verdict(json!({"aud": [AUD], "exp": "later"})),
        Signature::Refused
    );
    assert_eq!(
        verdict(json!({"aud": 7, "exp": now + 600})),
        Signature::Refused
    );
}

#[test]
fn only_verified_and_unverifiable_tokens_go_on_to_the_review() {
    let to_review = [Signature::Verified, Signature::Unverifiable];
    for verdict in to_review {
        assert_eq!(verdict.refusal(), None, "{verdict:?}");
    }
    for verdict in [Signature::Refused, Signature::Forged, Signature::UnknownKey] {
        assert!(verdict.refusal().is_some(), "{verdict:?}");
    }
}

#[test]
fn malformed_tokens_are_forged_whatever_part_is_broken() {
    let signer = Signer::es256();
    let published = keys(&[signer.jwk("k1")]);
    let genuine = signer.token(&json!({"alg": "ES256", "kid": "k1"}));
    let parts: Vec<&str> = genuine.split('.').collect();
    let huge = "A".repeat(1 << 20);
    let broken = [
        String::new(),
        "no-dots".into(),
        "a.b".into(),
        format!("{genuine}.{}", parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.!!{}", parts[0], parts[1], parts[2]),
        format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        format!("{}.*{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(br#"["ES256"]"#), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], huge, parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], huge),
        format!("{huge}.{}.{}", parts[1], parts[2]),
    ];
    for token in &broken {
        let shown = &token[..token.len().min(80)];
        assert_eq!(published.check(token, AUD), Signature::Forged, "{shown}");
    }
}

#[test]
fn keys_this_cannot_verify_with_leave_their_tokens_to_the_review() {
    let signer = Signer::es256();
    let p521 = json!({"use": "sig", "kty": "EC", "kid": "big", "crv": "P-521", "alg": "ES512",
                          "x": b64(&[1; 66]), "y": b64(&[2; 66])});
    let okp = json!({"use": "sig", "kty": "OKP", "kid": "ed", "alg": "EdDSA", "crv": "Ed25519",
                         "x": b64(&[3; 32])});
    // A P-256 key whose coordinates are not P-256's: nothing verifies with it.
    let short = json!({"use": "sig", "kty": "EC", "kid": "short", "crv": "P-256",
                           "x": b64(&[1; 31]), "y": b64(&[2; 32])});
    let published = keys(&[signer.jwk("k1"), p521, okp, short]);
    assert_eq!(published.len(), 4);
    let es512 = signer.token(&json!({"alg": "ES512", "kid": "big"}));
    assert_eq!(published.check(&es512, AUD), Signature::Unverifiable);
    let eddsa = signer.token(&json!({"alg": "EdDSA", "kid": "ed"}));
    assert_eq!(published.check(&eddsa, AUD), Signature::Unverifiable);
    let short = signer.token(&json!({"alg": "ES256", "kid": "short"}));
    assert_eq!(published.check(&short, AUD), Signature::Unverifiable);
    // ES256 under the P-521 key's id: that key cannot have made it.
    let confused = signer.token(&json!({"alg": "ES256", "kid": "big"}));
    assert_eq!(published.check(&confused, AUD), Signature::Forged);
}

#[test]
fn a_set_without_signing_keys_or_not_a_set_is_an_error() {
    let no_key = |jwk: serde_json::Value| {
        IssuerKeys::parse(json!({"keys": [jwk]}).to_string().as_bytes()).is_err()
    };
    assert!(no_key(
        json!({"use": "enc", "kty": "RSA", "kid": "e", "n": "AQAB", "e": "AQAB"})
    ));
    assert!(IssuerKeys::parse(br#"{"keys": []}"#).is_err());
    assert!(IssuerKeys::parse(b"<html>").is_err());
    assert!(IssuerKeys::parse(br#"{"keys": {}}"#).is_err());
    // A curve with a claimed algorithm of another curve or type is no key.
    let (x, y) = (b64(&[1; 32]), b64(&[2; 32]));
    for alg in ["ES384", "RS256", "HS256"] {
        let jwk = json!({"use": "sig", "kty": "EC", "kid": "m", "crv": "P-256", "alg": alg,
                             "x": x, "y": y});
        assert!(no_key(jwk), "{alg}");
    }
    // An RSA key claiming an algorithm of another type.
    for alg in ["ES256", "HS256", "RSA-OAEP", "none"] {
        let jwk = json!({"use": "sig", "kty": "RSA", "kid": "r", "alg": alg, "n": "AQAB",
                             "e": "AQAB"});
        assert!(no_key(jwk), "{alg}");
    }
    // Unknown curves and types, and an EC type with RSA members.
    assert!(no_key(
        json!({"kty": "EC", "kid": "k", "crv": "secp256k1", "x": x, "y": y})
    ));
    assert!(no_key(
        json!({"kty": "EC", "kid": "k", "n": "AQAB", "e": "AQAB"})
    ));
    assert!(no_key(json!({"kty": "XYZ", "kid": "k"})));
}

/// Prints what a check costs (run with `--nocapture`); asserts only the
/// verdicts, never the times.
#[test]
fn time_per_check_is_printed() {
    for signer in [Signer::rs256(), Signer::es256()] {
        let alg = signer.alg();
        let (published, token) = published_with_token(&signer);
        let rounds = 2_000u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            assert_eq!(published.check(&token, AUD), Signature::Verified);
        }
        let elapsed = started.elapsed();
        let forged = signed_by_stranger(&token);
        let started_forged = std::time::Instant::now();
        for _ in 0..rounds {
            assert_eq!(published.check(&forged, AUD), Signature::Forged);
        }
        println!(
            "{alg}: {:?} per verified check, {:?} per forged check",
            elapsed / rounds,
            started_forged.elapsed() / rounds
        );
    }
}

#![allow(clippy::unwrap_used)]

use super::*;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::json;

/// A 2048-bit RSA private key (PKCS#1 DER) made for these tests only.
const RSA_KEY: &[u8] = include_bytes!("../../../testdata/test-only-rsa-2048.der");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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

    /// A token with this header, signed by this key.
    fn token(&self, header: &serde_json::Value) -> String {
        let payload = json!({"aud": ["kata-operator/agent"], "exp": 4_000_000_000u64});
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        format!("{signed}.{}", b64(&self.sign(signed.as_bytes())))
    }
}

fn keys(jwks: &[serde_json::Value]) -> IssuerKeys {
    IssuerKeys::parse(json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
}

#[test]
fn a_token_signed_by_a_published_key_verifies_and_any_other_is_forged() {
    for signer in [Signer::es256(), Signer::rs256()] {
        let alg = signer.alg();
        let published = keys(&[signer.jwk("k1")]);
        let genuine = signer.token(&json!({"alg": alg, "kid": "k1"}));
        assert_eq!(published.check(&genuine), Signature::Verified, "{alg}");

        // The same header and claims, signed by a stranger's key.
        let stranger = Signer::es256();
        let (signed, _) = genuine.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", b64(&stranger.sign(signed.as_bytes())));
        assert_eq!(published.check(&forged), Signature::Forged, "{alg}");

        // A claim changed under a genuine signature.
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let widened = b64(br#"{"aud":["kata-operator/agent"],"exp":4100000000}"#);
        parts[1] = &widened;
        assert_eq!(
            published.check(&parts.join(".")),
            Signature::Forged,
            "{alg}"
        );
    }
}

#[test]
fn an_algorithm_no_key_signs_with_is_forged_and_an_unknown_key_id_is_told_apart() {
    let signer = Signer::es256();
    let published = keys(&[signer.jwk("k1")]);
    // alg confusion: the token claims RS256 or HS256 for an EC key id.
    for alg in ["RS256", "HS256", "none", "ES384"] {
        let token = signer.token(&json!({"alg": alg, "kid": "k1"}));
        assert_eq!(published.check(&token), Signature::Forged, "{alg}");
    }
    let rotated = signer.token(&json!({"alg": "ES256", "kid": "k2"}));
    assert_eq!(published.check(&rotated), Signature::UnknownKey);
    // Without a key id, every key of the algorithm is tried.
    let unnamed = signer.token(&json!({"alg": "ES256"}));
    assert_eq!(published.check(&unnamed), Signature::Verified);
    assert_eq!(published.check("a.b"), Signature::Forged);
    assert_eq!(published.check("no-dots"), Signature::Forged);
}

#[test]
fn keys_this_cannot_verify_with_leave_their_tokens_to_the_review() {
    let signer = Signer::es256();
    let p521 = json!({"use": "sig", "kty": "EC", "kid": "big", "crv": "P-521",
                          "x": b64(&[1; 66]), "y": b64(&[2; 66])});
    let okp = json!({"use": "sig", "kty": "OKP", "kid": "ed", "alg": "EdDSA", "crv": "Ed25519",
                         "x": b64(&[3; 32])});
    let published = keys(&[signer.jwk("k1"), p521, okp]);
    assert_eq!(published.len(), 3);
    let es512 = signer.token(&json!({"alg": "ES512", "kid": "big"}));
    assert_eq!(published.check(&es512), Signature::Unverifiable);
    let eddsa = signer.token(&json!({"alg": "EdDSA", "kid": "ed"}));
    assert_eq!(published.check(&eddsa), Signature::Unverifiable);
    // ES256 under the P-521 key's id: that key cannot have made it.
    let confused = signer.token(&json!({"alg": "ES256", "kid": "big"}));
    assert_eq!(published.check(&confused), Signature::Forged);
}

#[test]
fn a_set_without_signing_keys_or_not_a_set_is_an_error() {
    let encryption = json!({"use": "enc", "kty": "RSA", "kid": "e", "n": "AQAB", "e": "AQAB"});
    assert!(IssuerKeys::parse(json!({"keys": [encryption]}).to_string().as_bytes()).is_err());
    assert!(IssuerKeys::parse(br#"{"keys": []}"#).is_err());
    assert!(IssuerKeys::parse(b"<html>").is_err());
    // A curve with a claimed algorithm of another curve is no key.
    let mismatched = json!({"use": "sig", "kty": "EC", "kid": "m", "crv": "P-256", "alg": "ES384",
                                "x": b64(&[1; 32]), "y": b64(&[2; 32])});
    assert!(IssuerKeys::parse(json!({"keys": [mismatched]}).to_string().as_bytes()).is_err());
}

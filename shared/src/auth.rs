//! Signed bearer tokens.
//!
//! A token is `xoxp-<payload>.<signature>` (`xoxb-` for bots, `xoxa-` for admins, `xoxs-` for
//! service tokens that nodes mint for internal calls): the
//! payload is base64url JSON naming the workspace and user, the signature an HMAC-SHA256 of
//! it under the cluster's secret. Any node holding the secret verifies a token without a
//! store round trip, so gateways at the edge authenticate locally.
//!
//! Tokens do not expire, and one cannot be revoked on its own: `issued_at` only makes tokens
//! distinct. A token is valid until the cluster secret changes, which ends every token at once
//! (clients sign in again). So a token that fails [`TokenSigner::verify`] is missing,
//! malformed or forged (or signed under an old secret), never expired.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{UserId, WorkspaceId};

type HmacSha256 = Hmac<Sha256>;

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "w")]
    pub workspace: WorkspaceId,
    #[serde(rename = "u")]
    pub user: UserId,
    /// May call the admin methods (create users, issue tokens) of its workspace.
    #[serde(rename = "a", default)]
    pub admin: bool,
    #[serde(rename = "b", default)]
    pub bot: bool,
    /// Issued at, seconds since the epoch; makes each issued token distinct.
    #[serde(rename = "i")]
    pub issued_at: u64,
    /// A service token, minted by a node of the cluster (Flannel) for the Web API's
    /// `internal.*` methods: it may call those and nothing else, and no user token may call
    /// them. Absent in older tokens, which stay valid as user tokens.
    #[serde(rename = "s", default, skip_serializing_if = "is_false")]
    pub service: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Claims {
    /// Placeholder user of service tokens: no store holds a user with this id.
    pub const SERVICE_USER: &'static str = "USERVICE";

    /// What names one token among all: two tokens with the same claims are the same bytes
    /// (the same payload, signed with the same key), so revoking this id revokes exactly the
    /// tokens with these claims (`auth.revoke`).
    pub fn token_id(&self) -> String {
        format!(
            "{}.{}.{}.{}{}{}",
            self.workspace,
            self.user,
            self.issued_at,
            u8::from(self.admin),
            u8::from(self.bot),
            u8::from(self.service)
        )
    }

    /// Claims of a service token for `workspace`.
    pub fn service(workspace: WorkspaceId, issued_at: u64) -> Claims {
        Claims {
            workspace,
            user: UserId::from(Claims::SERVICE_USER),
            admin: false,
            bot: false,
            issued_at,
            service: true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is missing")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
}

/// Signs and verifies tokens with the cluster secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> TokenSigner {
        TokenSigner {
            key: secret.to_vec(),
        }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(payload);
        mac
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let sig = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        let prefix = if claims.service {
            "xoxs"
        } else if claims.admin {
            "xoxa"
        } else if claims.bot {
            "xoxb"
        } else {
            "xoxp"
        };
        format!("{prefix}-{payload}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix("xoxp-")
            .or_else(|| token.strip_prefix("xoxb-"))
            .or_else(|| token.strip_prefix("xoxa-"))
            .or_else(|| token.strip_prefix("xoxs-"))
            .ok_or(TokenError::Malformed)?;
        let (payload, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(payload.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }
}

impl TokenSigner {
    /// Signs `payload` for `purpose` (say `"hook"`): base64url of an HMAC-SHA256 under the
    /// cluster secret. The purpose is part of what is signed, and the signed bytes start with
    /// a prefix that no token payload (base64url text) can hold, so a signature made here
    /// never verifies as a token's, nor as one of another purpose. `purpose` holds no `\n`.
    pub fn sign_payload(&self, purpose: &str, payload: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.purpose_mac(purpose, payload).finalize().into_bytes())
    }

    /// Checks a signature made by [`TokenSigner::sign_payload`] for the same `purpose`.
    pub fn verify_payload(
        &self,
        purpose: &str,
        payload: &[u8],
        signature: &str,
    ) -> Result<(), TokenError> {
        let sig = URL_SAFE_NO_PAD
            .decode(signature.trim())
            .map_err(|_| TokenError::Malformed)?;
        self.purpose_mac(purpose, payload)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)
    }

    fn purpose_mac(&self, purpose: &str, payload: &[u8]) -> HmacSha256 {
        debug_assert!(!purpose.contains('\n'));
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(b"switchboard-signed:");
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }
}

/// Takes the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            workspace: WorkspaceId::from("TDEMO"),
            user: UserId::from("UALICE"),
            admin: false,
            bot: false,
            issued_at: 1,
            service: false,
        }
    }

    #[test]
    fn service_tokens_are_marked_and_old_tokens_are_not_service_tokens() {
        let s = TokenSigner::new(b"secret");
        let t = s.issue(&Claims::service(WorkspaceId::from("TDEMO"), 1));
        assert!(t.starts_with("xoxs-"));
        let c = s.verify(&t).unwrap();
        assert!(c.service);
        assert_eq!(c.user.as_str(), Claims::SERVICE_USER);
        // A user token's payload has no "s" key (so tokens issued before the field existed
        // read the same), and reads back as a user token.
        let user = s.issue(&claims());
        let payload = user
            .strip_prefix("xoxp-")
            .unwrap()
            .split_once('.')
            .unwrap()
            .0;
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(!json.contains("\"s\""), "{json}");
        assert!(!s.verify(&user).unwrap().service);
        // A service token cannot pass for a user token by changing its prefix: the claims
        // still say service.
        let relabelled = format!("xoxp-{}", t.strip_prefix("xoxs-").unwrap());
        assert!(s.verify(&relabelled).unwrap().service);
    }

    #[test]
    fn issued_tokens_verify() {
        let s = TokenSigner::new(b"secret");
        let t = s.issue(&claims());
        assert!(t.starts_with("xoxp-"));
        assert_eq!(s.verify(&t).unwrap(), claims());
    }

    /// Tokens carry no expiry (see the module docs): one issued long ago still verifies.
    /// Adding one would log every client out; it must be a deliberate change.
    #[test]
    fn old_tokens_still_verify() {
        let s = TokenSigner::new(b"secret");
        let mut c = claims();
        c.issued_at = 0;
        assert_eq!(s.verify(&s.issue(&c)).unwrap(), c);
    }

    #[test]
    fn forged_and_malformed_tokens_fail() {
        let s = TokenSigner::new(b"secret");
        let other = TokenSigner::new(b"other");
        assert_eq!(
            s.verify(&other.issue(&claims())),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify(""), Err(TokenError::Missing));
        assert_eq!(s.verify("xoxp-abc"), Err(TokenError::Malformed));
        assert_eq!(s.verify("bearer"), Err(TokenError::Malformed));
        // A payload swapped in under a valid signature fails.
        let t = s.issue(&claims());
        let (_, sig) = t.split_once('.').unwrap();
        let mut c = claims();
        c.workspace = WorkspaceId::from("TOTHER");
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            s.verify(&format!("xoxp-{forged_payload}.{sig}")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn signed_payloads_verify_only_for_their_purpose() {
        let s = TokenSigner::new(b"secret");
        let sig = s.sign_payload("hook", b"payload");
        assert_eq!(s.verify_payload("hook", b"payload", &sig), Ok(()));
        assert_eq!(
            s.verify_payload("hook", b"payloaD", &sig),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify_payload("other", b"payload", &sig),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            TokenSigner::new(b"other").verify_payload("hook", b"payload", &sig),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify_payload("hook", b"payload", "!!"),
            Err(TokenError::Malformed)
        );
        // A payload signed this way does not pass for a token, even when it holds claims.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let sig = s.sign_payload("hook", payload.as_bytes());
        assert_eq!(
            s.verify(&format!("xoxp-{payload}.{sig}")),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn bearer_header_is_parsed() {
        assert_eq!(bearer("Bearer xoxp-1.2"), Some("xoxp-1.2"));
        assert_eq!(bearer("bearer  xoxp-1.2 "), Some("xoxp-1.2"));
        assert_eq!(bearer("Basic abc"), None);
    }
}

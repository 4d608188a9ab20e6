//! The client side of authentication during startup: trust, cleartext and md5 (under the
//! password rule), SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (under `channel_binding`). Each
//! request of the server becomes the answer to send; `startup` does the I/O.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::backend::{
    AuthenticationMd5PasswordBody, AuthenticationSaslBody, Message,
};
use postgres_protocol::message::frontend;

use super::protocol_error;
use crate::source::conninfo::{ChannelBindingMode, ConnInfo};
use crate::source::error::SourceError;
use crate::source::transport::{self, Link, PasswordRequest, check_password_request};

/// Authentication in progress on one connection.
pub(super) struct Authenticator<'a> {
    info: &'a ConnInfo,
    link: Link,
    /// `tls-server-end-point` data for SCRAM-SHA-256-PLUS (TLS only).
    binding: Option<Vec<u8>>,
    scram: Option<ScramSha256>,
    /// SCRAM-PLUS was chosen, and the server's final signature then verified.
    plus_started: bool,
    scram_verified: bool,
}

impl<'a> Authenticator<'a> {
    pub(super) fn new(info: &'a ConnInfo, link: Link, binding: Option<Vec<u8>>) -> Self {
        Authenticator {
            info,
            link,
            binding,
            scram: None,
            plus_started: false,
            scram_verified: false,
        }
    }

    /// Answers an authentication message of the server into `out` (nothing, for those that
    /// need no answer). `tag` names any other message in the error.
    pub(super) fn answer(
        &mut self,
        msg: Message,
        tag: u8,
        out: &mut BytesMut,
    ) -> Result<(), SourceError> {
        match msg {
            Message::AuthenticationOk => self.check_ok(),
            // Under channel_binding=require no password is revealed to a server that has not
            // been bound to the TLS session.
            Message::AuthenticationCleartextPassword | Message::AuthenticationMd5Password(_)
                if self.require_binding() =>
            {
                Err(no_binding())
            }
            Message::AuthenticationCleartextPassword => self.cleartext(out),
            Message::AuthenticationMd5Password(body) => self.md5(&body, out),
            Message::AuthenticationSasl(body) => self.scram_start(&body, out),
            Message::AuthenticationSaslContinue(body) => self.scram_continue(body.data(), out),
            Message::AuthenticationSaslFinal(body) => self.scram_finish(body.data()),
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => Err(SourceError::Fatal(
                "the server asks for an authentication method pglive does not support \
                 (use trust, password, md5 or scram-sha-256)"
                    .into(),
            )),
            _ => Err(SourceError::Protocol(format!(
                "unexpected message {:?} during startup",
                char::from(tag)
            ))),
        }
    }

    fn require_binding(&self) -> bool {
        self.info.channel_binding == ChannelBindingMode::Require
    }

    fn password(&self) -> Result<&'a str, SourceError> {
        self.info.password.as_deref().ok_or_else(|| {
            SourceError::Fatal(
                transport::NoPassword {
                    user: self.info.user.clone(),
                }
                .to_string(),
            )
        })
    }

    /// The server accepts us: it must have proved itself as the rules demand.
    fn check_ok(&self) -> Result<(), SourceError> {
        if self.scram.is_some() {
            return Err(SourceError::Fatal(
                "the server ended SCRAM authentication without proving it knows the password"
                    .into(),
            ));
        }
        if self.require_binding() && !(self.plus_started && self.scram_verified) {
            return Err(no_binding());
        }
        Ok(())
    }

    fn cleartext(&self, out: &mut BytesMut) -> Result<(), SourceError> {
        let password = self.password()?;
        check_password_request(self.info, self.link, PasswordRequest::Cleartext)
            .map_err(|e| SourceError::Fatal(e.to_string()))?;
        frontend::password_message(password.as_bytes(), out).map_err(protocol_error)
    }

    fn md5(
        &self,
        body: &AuthenticationMd5PasswordBody,
        out: &mut BytesMut,
    ) -> Result<(), SourceError> {
        let password = self.password()?;
        check_password_request(self.info, self.link, PasswordRequest::Md5)
            .map_err(|e| SourceError::Fatal(e.to_string()))?;
        let hash = postgres_protocol::authentication::md5_hash(
            self.info.user.as_bytes(),
            password.as_bytes(),
            body.salt(),
        );
        frontend::password_message(hash.as_bytes(), out).map_err(protocol_error)
    }

    /// Picks SCRAM-SHA-256-PLUS when both sides can bind to the TLS session (and the
    /// configuration allows it), SCRAM-SHA-256 otherwise, and sends the first message.
    fn scram_start(
        &mut self,
        body: &AuthenticationSaslBody,
        out: &mut BytesMut,
    ) -> Result<(), SourceError> {
        let mut plain = false;
        let mut plus = false;
        let mut mechanisms = body.mechanisms();
        while let Some(m) = mechanisms.next().map_err(protocol_error)? {
            plain |= m == SCRAM_SHA_256;
            plus |= m == SCRAM_SHA_256_PLUS;
        }
        let want_binding = self.info.channel_binding != ChannelBindingMode::Disable;
        let (mechanism, cb) = match (&self.binding, plus && want_binding) {
            (Some(data), true) => {
                self.plus_started = true;
                (
                    SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(data.clone()),
                )
            }
            // We could bind but the server cannot: say so ('y'), which also detects a
            // downgrade by a man in the middle.
            (Some(_), false) if want_binding => (SCRAM_SHA_256, ChannelBinding::unrequested()),
            _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        if self.require_binding() && !self.plus_started {
            return Err(no_binding());
        }
        if !plain && !self.plus_started {
            return Err(SourceError::Fatal(
                "the server offers no SASL mechanism pglive supports".into(),
            ));
        }
        let scram = ScramSha256::new(self.password()?.as_bytes(), cb);
        frontend::sasl_initial_response(mechanism, scram.message(), out).map_err(protocol_error)?;
        self.scram = Some(scram);
        Ok(())
    }

    fn scram_continue(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), SourceError> {
        let scram = self
            .scram
            .as_mut()
            .ok_or_else(|| SourceError::Protocol("SASL continue before SASL start".into()))?;
        scram
            .update(data)
            .map_err(|e| SourceError::Fatal(format!("SCRAM authentication failed: {e}")))?;
        frontend::sasl_response(scram.message(), out).map_err(protocol_error)
    }

    /// Verifies the server's signature: it knows the password (and, with PLUS, is the end of
    /// our TLS session).
    fn scram_finish(&mut self, data: &[u8]) -> Result<(), SourceError> {
        self.scram
            .take()
            .ok_or_else(|| SourceError::Protocol("SASL final before SASL start".into()))?
            .finish(data)
            .map_err(|e| {
                SourceError::Fatal(format!("the server's SCRAM signature is invalid: {e}"))
            })?;
        self.scram_verified = true;
        Ok(())
    }
}

fn no_binding() -> SourceError {
    SourceError::Fatal(
        "channel_binding=require, but the server does not authenticate with \
         SCRAM-SHA-256-PLUS on this connection"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    /// An authentication request: `R`, its length, the request code and `rest`.
    fn request(code: i32, rest: &[u8]) -> Message {
        let mut raw = BytesMut::new();
        raw.put_u8(b'R');
        raw.put_i32(8 + rest.len() as i32);
        raw.put_i32(code);
        raw.put_slice(rest);
        Message::parse(&mut raw).unwrap().unwrap()
    }

    fn answer(url: &str, link: Link, requests: Vec<Message>) -> Result<BytesMut, SourceError> {
        let info = ConnInfo::parse(url).unwrap();
        let mut auth = Authenticator::new(&info, link, Some(vec![1; 32]));
        let mut out = BytesMut::new();
        for msg in requests {
            auth.answer(msg, b'R', &mut out)?;
        }
        Ok(out)
    }

    fn error_of(result: Result<BytesMut, SourceError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    const CLEARTEXT: i32 = 3;
    const MD5: i32 = 5;
    const SASL: i32 = 10;

    #[test]
    fn a_cleartext_password_goes_only_over_a_link_that_protects_it() {
        let url = "postgres://u:secret@h/db";
        let sent = answer(url, Link::Unix, vec![request(CLEARTEXT, b"")]).unwrap();
        assert_eq!(&sent[..], b"p\0\0\0\x0bsecret\0");
        let refused = error_of(answer(url, Link::Plain, vec![request(CLEARTEXT, b"")]));
        assert!(refused.contains("pglive did not send it"), "{refused}");
    }

    #[test]
    fn no_password_is_revealed_under_channel_binding_require() {
        let url = "postgres://u:secret@h/db?channel_binding=require";
        for request in [request(CLEARTEXT, b""), request(MD5, b"salt")] {
            let refused = error_of(answer(url, Link::TlsVerified, vec![request]));
            assert!(refused.contains("channel_binding=require"), "{refused}");
        }
        let ok = error_of(answer(url, Link::TlsVerified, vec![request(0, b"")]));
        assert!(ok.contains("channel_binding=require"), "{ok}");
        let unbound = error_of(answer(
            url,
            Link::TlsVerified,
            vec![request(SASL, b"SCRAM-SHA-256\0\0")],
        ));
        assert!(unbound.contains("channel_binding=require"), "{unbound}");
    }

    #[test]
    fn scram_plus_is_chosen_when_both_sides_can_bind() {
        let url = "postgres://u:secret@h/db";
        let sent = answer(
            url,
            Link::TlsUnverified,
            vec![request(SASL, b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0")],
        )
        .unwrap();
        assert!(sent.starts_with(b"p"), "{sent:?}");
        assert!(
            sent.windows(18).any(|w| w == b"SCRAM-SHA-256-PLUS"),
            "{sent:?}"
        );
    }

    #[test]
    fn success_before_the_server_proves_itself_is_refused() {
        let refused = error_of(answer(
            "postgres://u:secret@h/db",
            Link::Unix,
            vec![request(SASL, b"SCRAM-SHA-256\0\0"), request(0, b"")],
        ));
        assert!(refused.contains("without proving"), "{refused}");
    }

    #[test]
    fn unsupported_methods_and_missing_passwords_are_named() {
        let kerberos = error_of(answer(
            "postgres://u@h/db",
            Link::Unix,
            vec![request(2, b"")],
        ));
        assert!(kerberos.contains("does not support"), "{kerberos}");
        let none = error_of(answer(
            "postgres://u@h/db",
            Link::Unix,
            vec![request(CLEARTEXT, b"")],
        ));
        assert!(none.contains("the URL has none"), "{none}");
    }
}

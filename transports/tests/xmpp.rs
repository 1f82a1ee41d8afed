//! XMPP transport against a real Prosody.

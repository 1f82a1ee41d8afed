//! A hostile IRC server's output: seeded random lines (random bytes, prefixes, tags, commands,
//! numerics, parameters), with the numerics and commands that steer a client's state drawn
//! often. Shared by the randomized test (`irc_hostile.rs`) and the `irc_chaos` benchmark.
//!
//! The stream leaves out only what a real server legitimately does to the bot (a KICK or PART
//! of the bot from its own channel, a private message that is a command): those are not out of
//! place, and the bot must act on them.

#![allow(dead_code, unreachable_pub, missing_docs)]

use fastrand::Rng;

/// Numerics that mean something to a client, drawn more often than the rest.
const NUMERICS: &[u16] = &[
    1, 2, 3, 4, 5, 303, 353, 366, 376, 396, 401, 403, 404, 421, 422, 431, 432, 433, 436, 437, 442,
    451, 464, 465, 470, 471, 473, 474, 475, 477, 480, 482, 900, 901, 902, 903, 904, 905, 906, 907,
    908,
];

const COMMANDS: &[&str] = &[
    "PRIVMSG",
    "NOTICE",
    "JOIN",
    "PART",
    "KICK",
    "NICK",
    "QUIT",
    "MODE",
    "TOPIC",
    "PING",
    "PONG",
    "CAP",
    "AUTHENTICATE",
    "INVITE",
    "ERROR",
    "CHGHOST",
    "ACCOUNT",
    "AWAY",
    "WALLOPS",
    "KILL",
];

/// A seeded generator of hostile lines for a bot called `nick` in `channel`.
pub struct Chaos {
    rng: Rng,
    nick: String,
    channel: String,
}

impl Chaos {
    pub fn new(seed: u64, nick: &str, channel: &str) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            nick: nick.to_owned(),
            channel: channel.to_owned(),
        }
    }

    fn word(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.usize(1..=max);
        (0..n)
            .map(|_| match self.rng.u8(0..10) {
                // Control characters and bytes that are not UTF-8, but never a line end.
                0 => *self
                    .rng
                    .choice(&[0u8, 1, 7, 27, 0x7f, 0xc3, 0xff, 0x80, b'\t'])
                    .unwrap(),
                1 => *self.rng.choice(b"#&+!@:,.*?~%$^[]{}|\\/-_").unwrap(),
                _ => self.rng.alphanumeric() as u8,
            })
            .collect()
    }

    fn target(&mut self) -> Vec<u8> {
        match self.rng.u8(0..8) {
            0 => self.nick.clone().into_bytes(),
            1 => self.channel.clone().into_bytes(),
            2 => b"*".to_vec(),
            3 => {
                let mut c = b"#".to_vec();
                c.extend(self.word(12));
                c
            }
            4 => self.channel.to_uppercase().into_bytes(),
            _ => self.word(16),
        }
    }

    fn prefix(&mut self) -> Vec<u8> {
        let mut p = b":".to_vec();
        match self.rng.u8(0..8) {
            0 => p.extend(b"irc.fake"),
            1 => p.extend(format!("{}!bot@127.0.0.1", self.nick).as_bytes()),
            2 => p.extend(b"alice!a@127.0.0.1"),
            3 => p.extend(self.word(20)),
            _ => {
                let (n, u, h) = (self.word(9), self.word(8), self.word(30));
                p.extend(n);
                p.push(b'!');
                p.extend(u);
                p.push(b'@');
                p.extend(h);
            }
        }
        p.push(b' ');
        p
    }

    /// One line, CRLF included.
    pub fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        if self.rng.u8(0..20) == 0 {
            // Raw garbage.
            line.extend(self.word(300));
            line.retain(|b| *b != b'\r' && *b != b'\n');
            line.extend(b"\r\n");
            return line;
        }
        if self.rng.u8(0..10) == 0 {
            line.push(b'@');
            line.extend(self.word(30));
            line.push(b' ');
        }
        let from_us_or_server = self.rng.u8(0..10) < 8;
        if from_us_or_server || self.rng.bool() {
            line.extend(self.prefix());
        }
        let command: Vec<u8> = if self.rng.bool() {
            let n = if self.rng.u8(0..4) > 0 {
                *self.rng.choice(NUMERICS).unwrap()
            } else {
                self.rng.u16(0..1000)
            };
            format!("{n:03}").into_bytes()
        } else if self.rng.u8(0..10) > 0 {
            self.rng.choice(COMMANDS).unwrap().as_bytes().to_vec()
        } else {
            self.word(10)
        };
        line.extend(&command);
        let params = self.rng.usize(0..=5);
        for _ in 0..params {
            line.push(b' ');
            line.extend(self.target());
        }
        if self.rng.bool() {
            line.extend(b" :");
            // Never a command: a symbol first, so that no router sees `!x` or `nick: x`.
            line.push(*self.rng.choice(b"~^%$&*").unwrap());
            line.extend(self.word(60));
        }
        line.retain(|b| *b != b'\r' && *b != b'\n');
        if self.is_legit_removal(&line) {
            return self.line();
        }
        line.truncate(510);
        line.extend(b"\r\n");
        line
    }

    /// What a server may legitimately say at any time and the bot must act on, which would
    /// only blur the test: a KICK or PART of the bot from its own channel (it rejoins after a
    /// delay), a KILL, and a 404 about its own channel (after a line of ours, that is the
    /// server saying the bot may not speak there; it mutes the channel for a minute).
    fn is_legit_removal(&self, line: &[u8]) -> bool {
        let text = String::from_utf8_lossy(line).to_ascii_lowercase();
        let (nick, chan) = (
            self.nick.to_ascii_lowercase(),
            self.channel.to_ascii_lowercase(),
        );
        let words: Vec<&str> = text.split(' ').collect();
        let cmd = words
            .iter()
            .position(|w| !w.starts_with(':') && !w.starts_with('@'))
            .map_or("", |i| words[i]);
        ((cmd == "kick" || cmd == "part") && text.contains(&chan) && text.contains(&nick))
            || (cmd == "kill" && text.contains(&nick))
            || (cmd == "404" && text.contains(&chan))
    }
}

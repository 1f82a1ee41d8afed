//! Panics: catching them, locating them, and saying what may be said of them. A panic's
//! message may carry a secret (`called unwrap on ... token=...`), so it goes to the log only;
//! chat, `!status` and the healing log see its class and location.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// A caught panic: its full message, for the log only (it may carry a secret:
/// `called unwrap on ... token=...`), and where it happened.
#[derive(Debug)]
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) at: Option<String>,
}

impl Panic {
    /// The panic whose payload `catch_unwind` returned, on the thread that panicked.
    pub(crate) fn from_payload(payload: &(dyn Any + Send)) -> Self {
        Self {
            message: panic_message(payload),
            at: take_panic_location(),
        }
    }

    /// What chat, `!status` and the healing log may show: the class and the location, never
    /// the message.
    pub(crate) fn summary(&self) -> String {
        match &self.at {
            Some(at) => format!("panicked at {at}"),
            None => "panicked".to_owned(),
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened, noted by the panic hook and taken by
    /// [`Panic::from_payload`] after `catch_unwind`.
    static LAST_PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Where the last panic on this thread happened, if it has not been taken yet.
pub(crate) fn take_panic_location() -> Option<String> {
    LAST_PANIC_AT.with(|l| l.borrow_mut().take())
}

/// How a framework actor ended while its thread unwound, for the failure report: where the
/// last panic on this thread happened (never its message).
pub(crate) fn how_it_ended() -> String {
    match take_panic_location() {
        Some(at) => format!("panicked at {at}"),
        None => "ended unexpectedly".to_owned(),
    }
}

/// Notes where a panic happened, for [`Panic::from_payload`]; every panic hook the framework
/// installs calls this.
pub(crate) fn note_panic(info: &std::panic::PanicHookInfo<'_>) {
    if let Some(l) = info.location() {
        let at = format!("{}:{}", l.file(), l.line());
        LAST_PANIC_AT.with(|cell| *cell.borrow_mut() = Some(at));
    }
}

/// Makes sure that panics are located for [`Panic`], keeping whatever hook is installed.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            note_panic(info);
            previous(info);
        }));
    });
}

/// Runs `fut` to completion, turning a panic into a [`Panic`].
pub(crate) async fn catch<F: Future>(fut: F) -> Result<F::Output, Panic> {
    AssertUnwindSafe(Caught::new(fut))
        .catch_unwind()
        .await
        .map_err(|p| Panic::from_payload(&*p))
}

thread_local! {
    /// How many framework catches are running on this thread right now.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether a panic on this thread now will be caught by the framework, which then logs it
/// once, with what it was running (the panic hook need not).
pub(crate) fn panic_is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Marks this thread as catching while it lives.
struct Catching;

impl Catching {
    fn new() -> Self {
        CATCHING.with(|c| c.set(c.get() + 1));
        Self
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Runs `f` as a framework catch (see [`panic_is_caught`]); the caller catches its panic.
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> R {
    let _c = Catching::new();
    f()
}

/// A future whose every poll runs as a framework catch (see [`panic_is_caught`]).
pub(crate) struct Caught<F> {
    inner: std::pin::Pin<Box<F>>,
}

impl<F: Future> Caught<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _c = Catching::new();
        self.inner.as_mut().poll(cx)
    }
}

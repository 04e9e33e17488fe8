//! openraft's async runtime on glommio: [`GlommioRuntime`] implements
//! [`openraft_rt::AsyncRuntime`] (with openraft's `single-threaded` feature,
//! so `!Send` futures and `Rc` state are fine).
//!
//! No glommio adapter is published; this one has the shape of openraft's
//! compio and monoio adapters, but links no tokio: the channels are
//! runtime-agnostic (`async-channel` for MPSC, `futures-channel` for oneshot,
//! `futures::lock` for the mutex) and the watch channel is written here for
//! one thread.
//!
//! Invariants:
//! - every function that touches glommio's reactor ([`AsyncRuntime::spawn`],
//!   a timer's first poll) runs inside a glommio executor; creating a
//!   [`Sleep`] or [`Timeout`] does not, because `glommio::timer::Timer::new`
//!   panics outside an executor and openraft builds timers ahead of time;
//! - a spawned task runs to completion even if its [`JoinHandle`] is dropped
//!   (glommio cancels a dropped `Task`, openraft expects tokio's detach);
//! - [`JoinError`] never reports a panic: glommio has no panic information
//!   for a task, and a panic inside a task takes the executor thread down
//!   (which is the behaviour we want for a bug on a core).

use std::cell::{Cell, Ref, RefCell};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use openraft_rt::{
    AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender, OptionalSend, OptionalSync,
    TryRecvError,
};

/// openraft's runtime on the glommio executor of the current thread.
///
/// It holds nothing: Raft runs inside the node's own per-core executors, and
/// [`AsyncRuntime::block_on`] (tests, tools) makes a fresh executor per call.
#[derive(Debug, Default, Clone, Copy)]
pub struct GlommioRuntime;

/// io_uring buffer memory for an executor made by [`AsyncRuntime::block_on`]:
/// glommio's default (10 MiB) is wasted on tests that create many.
pub const BLOCK_ON_IO_MEMORY_BYTES: usize = 1 << 20;

/// A task did not produce its output: it was cancelled (glommio cancels
/// the tasks of an executor that stops).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the glommio task was cancelled before it finished")]
pub struct JoinError;

/// A future ran past its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct TimeoutError;

/// The handle of a spawned (detached) task: awaiting it gives its output.
/// Dropping it does not cancel the task.
pub struct JoinHandle<T> {
    inner: glommio::task::JoinHandle<T>,
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // glommio's JoinHandle is Unpin for every T.
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|output| output.ok_or(JoinError))
    }
}

/// A timer. The glommio timer is created at the first poll, so a `Sleep` can
/// be made outside an executor.
pub struct Sleep {
    deadline: Instant,
    timer: Option<glommio::timer::Timer>,
}

impl Sleep {
    fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            timer: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.deadline {
            self.timer = None;
            return Poll::Ready(());
        }
        let remaining = self.deadline - now;
        let timer = self
            .timer
            .get_or_insert_with(|| glommio::timer::Timer::new(remaining));
        // Timer is Unpin (an Rc inside); it reports ready at its own
        // deadline, which equals ours up to the clock read above.
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

/// A future with a deadline. The future is boxed so `Timeout` is `Unpin`
/// whatever the future (no unsafe pin projection; one allocation per
/// timeout, which openraft takes on election and RPC paths only).
pub struct Timeout<R, F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
    output: PhantomData<fn() -> R>,
}

impl<R, F: Future<Output = R>> Future for Timeout<R, F> {
    type Output = Result<R, TimeoutError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future first: one that is ready at the deadline still counts.
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimeoutError)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<R, T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // Detached: openraft drops handles of tasks it wants to keep running.
        JoinHandle {
            inner: glommio::spawn_local(future).detach(),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep::until(Instant::now() + duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout_at(Instant::now() + duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Sleep::until(deadline),
            output: PhantomData,
        }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        // A panic in a glommio task unwinds the executor thread; a handle
        // only ever sees cancellation.
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = ChannelMpsc;
    type Watch = LocalWatch;
    type Oneshot = FuturesOneshot;
    type Mutex<T: OptionalSend + 'static> = FuturesMutex<T>;

    fn new(_threads: usize) -> Self {
        // One executor, one thread: glommio is thread-per-core.
        GlommioRuntime
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(BLOCK_ON_IO_MEMORY_BYTES)
            .make()
            .expect("cannot create a glommio executor (io_uring and locked memory needed)")
            .run(future)
    }
}

/// Bounded MPSC channel: `async-channel` (runtime-agnostic, has weak senders).
#[derive(Debug)]
pub struct ChannelMpsc;

/// Sending half of [`ChannelMpsc`].
pub struct MpscTx<T>(async_channel::Sender<T>);

impl<T> Clone for MpscTx<T> {
    fn clone(&self) -> Self {
        MpscTx(self.0.clone())
    }
}

/// Receiving half of [`ChannelMpsc`].
pub struct MpscRx<T>(async_channel::Receiver<T>);

/// A sender that does not keep [`ChannelMpsc`] open.
pub struct MpscWeakTx<T>(async_channel::WeakSender<T>);

impl<T> Clone for MpscWeakTx<T> {
    fn clone(&self) -> Self {
        MpscWeakTx(self.0.clone())
    }
}

impl Mpsc for ChannelMpsc {
    type Sender<T: OptionalSend> = MpscTx<T>;
    type Receiver<T: OptionalSend> = MpscRx<T>;
    type WeakSender<T: OptionalSend> = MpscWeakTx<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        // async-channel refuses a zero capacity; tokio's would too.
        assert!(buffer > 0, "an mpsc channel needs room for one message");
        let (sender, receiver) = async_channel::bounded(buffer);
        (MpscTx(sender), MpscRx(receiver))
    }
}

impl<T: OptionalSend> MpscSender<ChannelMpsc, T> for MpscTx<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), openraft_rt::SendError<T>>> {
        let send = self.0.send(msg);
        async move {
            send.await
                .map_err(|async_channel::SendError(msg)| openraft_rt::SendError(msg))
        }
    }

    fn downgrade(&self) -> MpscWeakTx<T> {
        MpscWeakTx(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscReceiver<T> for MpscRx<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> {
        // Err means closed and drained.
        let receive = self.0.recv();
        async move { receive.await.ok() }
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|error| match error {
            async_channel::TryRecvError::Empty => TryRecvError::Empty,
            async_channel::TryRecvError::Closed => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<ChannelMpsc, T> for MpscWeakTx<T> {
    fn upgrade(&self) -> Option<MpscTx<T>> {
        self.0.upgrade().map(MpscTx)
    }
}

/// Oneshot channel: `futures-channel` (runtime-agnostic).
#[derive(Debug)]
pub struct FuturesOneshot;

/// Sending half of [`FuturesOneshot`].
pub struct OneshotTx<T>(futures_channel::oneshot::Sender<T>);

impl openraft_rt::Oneshot for FuturesOneshot {
    type Sender<T: OptionalSend> = OneshotTx<T>;
    type Receiver<T: OptionalSend> = futures_channel::oneshot::Receiver<T>;
    type ReceiverError = futures_channel::oneshot::Canceled;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (sender, receiver) = futures_channel::oneshot::channel();
        (OneshotTx(sender), receiver)
    }
}

impl<T: OptionalSend> openraft_rt::OneshotSender<T> for OneshotTx<T> {
    fn send(self, value: T) -> Result<(), T> {
        self.0.send(value)
    }
}

/// Async mutex: `futures::lock::Mutex` (runtime-agnostic; on one thread it
/// never blocks the executor, a contended lock just waits its turn).
pub struct FuturesMutex<T>(futures::lock::Mutex<T>);

impl<T: OptionalSend + 'static> openraft_rt::Mutex<T> for FuturesMutex<T> {
    type Guard<'a> = futures::lock::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        FuturesMutex(futures::lock::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> {
        self.0.lock()
    }
}

/// Watch channel for one thread: the newest value in a `RefCell` with a
/// version number; receivers remember the version they have seen.
///
/// A borrow ([`Ref`]) must not be held across an `.await` or a send: a send
/// while a borrow is alive panics (`RefCell`) where tokio's would deadlock.
#[derive(Debug)]
pub struct LocalWatch;

struct WatchShared<T> {
    value: RefCell<T>,
    /// Bumped by every send that changes the value.
    version: Cell<u64>,
    senders: Cell<usize>,
    receivers: Cell<usize>,
    /// Receivers waiting in `changed`; all are woken by a send or by the
    /// last sender going away (each re-checks its own version).
    waiters: RefCell<Vec<Waker>>,
}

impl<T> WatchShared<T> {
    fn notify(&self) {
        self.version.set(self.version.get() + 1);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Sending half of [`LocalWatch`].
pub struct WatchTx<T> {
    shared: Rc<WatchShared<T>>,
}

/// Receiving half of [`LocalWatch`].
pub struct WatchRx<T> {
    shared: Rc<WatchShared<T>>,
    seen_version: u64,
}

impl<T> Clone for WatchTx<T> {
    fn clone(&self) -> Self {
        self.shared.senders.set(self.shared.senders.get() + 1);
        WatchTx {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for WatchTx<T> {
    fn drop(&mut self) {
        let senders = self.shared.senders.get();
        assert!(senders > 0, "watch sender count underflow");
        self.shared.senders.set(senders - 1);
        if senders == 1 {
            // Receivers waiting in `changed` learn the channel closed.
            let waiters = std::mem::take(&mut *self.shared.waiters.borrow_mut());
            for waker in waiters {
                waker.wake();
            }
        }
    }
}

impl<T> Clone for WatchRx<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.set(self.shared.receivers.get() + 1);
        WatchRx {
            shared: self.shared.clone(),
            seen_version: self.seen_version,
        }
    }
}

impl<T> Drop for WatchRx<T> {
    fn drop(&mut self) {
        let receivers = self.shared.receivers.get();
        assert!(receivers > 0, "watch receiver count underflow");
        self.shared.receivers.set(receivers - 1);
    }
}

impl openraft_rt::Watch for LocalWatch {
    type Sender<T: OptionalSend + OptionalSync> = WatchTx<T>;
    type Receiver<T: OptionalSend + OptionalSync> = WatchRx<T>;
    type Ref<'a, T: OptionalSend + 'a> = Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(WatchShared {
            value: RefCell::new(init),
            version: Cell::new(0),
            senders: Cell::new(1),
            receivers: Cell::new(1),
            waiters: RefCell::new(Vec::new()),
        });
        (
            WatchTx {
                shared: shared.clone(),
            },
            WatchRx {
                shared,
                seen_version: 0,
            },
        )
    }
}

impl<T: OptionalSend + OptionalSync> openraft_rt::WatchSender<LocalWatch, T> for WatchTx<T> {
    fn send(&self, value: T) -> Result<(), openraft_rt::watch::SendError<T>> {
        // As tokio: with no receiver left the value is handed back.
        if self.shared.receivers.get() == 0 {
            return Err(openraft_rt::watch::SendError(value));
        }
        *self.shared.value.borrow_mut() = value;
        self.shared.notify();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = modify(&mut self.shared.value.borrow_mut());
        if modified {
            self.shared.notify();
        }
        modified
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn subscribe(&self) -> WatchRx<T> {
        self.shared.receivers.set(self.shared.receivers.get() + 1);
        // A new receiver has seen the current value, as in tokio.
        WatchRx {
            shared: self.shared.clone(),
            seen_version: self.shared.version.get(),
        }
    }
}

impl<T> fmt::Debug for WatchRx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchRx")
            .field("seen_version", &self.seen_version)
            .finish_non_exhaustive()
    }
}

impl<T: OptionalSend + OptionalSync> openraft_rt::WatchReceiver<LocalWatch, T> for WatchRx<T> {
    async fn changed(&mut self) -> Result<(), openraft_rt::RecvError> {
        std::future::poll_fn(|cx| {
            let version = self.shared.version.get();
            if version != self.seen_version {
                // An unseen value wins over a closed channel, as in tokio.
                self.seen_version = version;
                return Poll::Ready(Ok(()));
            }
            if self.shared.senders.get() == 0 {
                return Poll::Ready(Err(openraft_rt::RecvError(())));
            }
            let mut waiters = self.shared.waiters.borrow_mut();
            // Re-polled without a send in between: keep one waker per task.
            if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn borrow_and_update(&mut self) -> Ref<'_, T> {
        self.seen_version = self.shared.version.get();
        self.shared.value.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_runtime_suite_passes_on_glommio() {
        // Creates its own executors through `block_on`, several times.
        openraft_rt::testing::Suite::<GlommioRuntime>::test_all();
    }

    #[test]
    fn timers_can_be_made_outside_an_executor() {
        // glommio's Timer::new panics outside an executor; ours waits for
        // the first poll.
        let sleep = GlommioRuntime::sleep(Duration::from_millis(5));
        let timeout =
            GlommioRuntime::timeout(Duration::from_millis(5), std::future::pending::<()>());
        let mut runtime = GlommioRuntime::new(1);
        let started = Instant::now();
        runtime.block_on(async move {
            sleep.await;
            assert_eq!(timeout.await, Err(TimeoutError));
        });
        assert!(started.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn a_dropped_handle_does_not_cancel_its_task() {
        let mut runtime = GlommioRuntime::new(1);
        runtime.block_on(async {
            let (sender, receiver) = futures_channel::oneshot::channel();
            drop(GlommioRuntime::spawn(async move {
                GlommioRuntime::sleep(Duration::from_millis(2)).await;
                sender.send(7).unwrap();
            }));
            assert_eq!(receiver.await, Ok(7));
        });
    }
}

//! The tunables of a session.

use super::*;

/// Tunables of a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Receive window of each stream, announced in SETTINGS INITIAL_WINDOW_SIZE, and the most
    /// a stream buffers for a slow reader. Default 64 KiB.
    pub initial_window: u32,
    /// Receive window of the whole session (at least 64 KiB, the protocol default).
    /// Default 8 MiB.
    pub session_window: u32,
    /// Largest frame payload accepted from the peer. Default [`DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Largest DATA payload we send in one frame. Default 32 KiB.
    pub max_data_frame: usize,
    /// How many DATA bytes may wait in the writer's queue before writers wait. Default 256 KiB.
    pub write_buffer: usize,
    /// Streams the peer may have open at once; more are refused. Default 1024.
    pub max_streams: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            initial_window: 64 * 1024,
            session_window: 8 << 20,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_data_frame: 32 * 1024,
            write_buffer: 256 * 1024,
            max_streams: 1024,
        }
    }
}

impl SessionConfig {
    pub(super) fn normalized(mut self) -> Self {
        self.initial_window = self.initial_window.clamp(1, MAX_WINDOW as u32);
        self.session_window = self
            .session_window
            .clamp(DEFAULT_WINDOW as u32, MAX_WINDOW as u32);
        self.write_buffer = self
            .write_buffer
            .clamp(1, Semaphore::MAX_PERMITS.min(1 << 30));
        self.max_data_frame = self
            .max_data_frame
            .clamp(1, self.write_buffer.min(crate::spdy::MAX_PAYLOAD));
        self
    }
}

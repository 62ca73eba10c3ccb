//! TODO(owner): handshake

//! Direct channels: frames written worker to worker over TCP.
//!
//! A process that runs consumers listens on one port ([`DirectExchange`]).
//! A producer connects, introduces its channel by its key (the run's
//! prefix and the channel id), and is accepted only if a consumer of this
//! process is waiting for exactly that channel; then it writes frames, each
//! prefixed by its length. The socket buffers have a fixed size, so what a
//! channel holds in flight is bounded by them, and TCP's flow control holds
//! the producer once they are full.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::DIRECT_CHUNK;
use super::frames::HEADER;

/// Each end's socket buffer: what a channel may hold in the kernel.
const SOCKET_BUFFER: u32 = 1 << 20;
/// The user-space buffer of a producer's connection.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long connecting and introducing a channel may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest channel key a producer may introduce.
const MAX_KEY: usize = 1024;

const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<TcpStream>>>>;

/// Where the producers of this process's channels connect: a TCP listener
/// and the channels waiting for their producer.
#[derive(Debug)]
pub struct DirectExchange {
    address: String,
    waiting: Waiting,
    accepting: JoinHandle<()>,
}

impl DirectExchange {
    /// Listens on `listen` (port 0 picks a free one); producers reach it
    /// at `advertise` (a host name or IP) and the port listened on.
    ///
    /// # Errors
    /// The address cannot be listened on.
    pub async fn bind(listen: SocketAddr, advertise: &str) -> io::Result<Arc<DirectExchange>> {
        let socket = socket_for(listen)?;
        socket.set_reuseaddr(true)?;
        // Accepted connections inherit it.
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket.bind(listen)?;
        let listener = socket.listen(1024)?;
        let port = listener.local_addr()?.port();
        let address = if advertise.contains(':') && !advertise.starts_with('[') {
            format!("[{advertise}]:{port}")
        } else {
            format!("{advertise}:{port}")
        };
        let waiting = Waiting::default();
        let accepting = tokio::spawn(accept(listener, waiting.clone()));
        Ok(Arc::new(DirectExchange {
            address,
            waiting,
            accepting,
        }))
    }

    /// The address producers connect to (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Waits for the producer of the channel `key`.
    pub(super) fn expect(&self, key: String) -> Expected {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(key.clone(), tx);
        Expected {
            key,
            waiting: self.waiting.clone(),
            stream: rx,
        }
    }
}

impl Drop for DirectExchange {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn lock(
    waiting: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<TcpStream>>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// A channel waiting for its producer to connect; forgotten when dropped.
pub(super) struct Expected {
    key: String,
    waiting: Waiting,
    stream: oneshot::Receiver<TcpStream>,
}

impl Expected {
    /// The producer's connection, once it is made.
    pub(super) async fn arrived(&mut self) -> Result<Receiving, String> {
        let stream = (&mut self.stream)
            .await
            .map_err(|_| "the exchange stopped listening".to_string())?;
        Ok(Receiving {
            reader: BufReader::with_capacity(WRITE_BUFFER, stream),
        })
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.key);
    }
}

async fn accept(listener: TcpListener, waiting: Waiting) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(hand_over(stream, peer, waiting.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: try again shortly.
                tracing::warn!(error = %e, "accepting a channel");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads which channel a connection is for and hands it to the consumer
/// waiting for it, or refuses it.
async fn hand_over(mut stream: TcpStream, peer: SocketAddr, waiting: Waiting) {
    let key = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_key(&mut stream)).await {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "a connection that does not introduce a channel");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "a connection that did not introduce its channel in time");
            return;
        }
    };
    let consumer = lock(&waiting).remove(&key);
    let Some(consumer) = consumer else {
        tracing::warn!(peer = %peer, channel = %key, "a producer for a channel nobody here waits for: refused");
        let _ = stream.write_all(&[REFUSED]).await;
        return;
    };
    if stream.write_all(&[ACCEPTED]).await.is_ok() {
        let _ = stream.set_nodelay(true);
        let _ = consumer.send(stream);
    }
}

async fn read_key(stream: &mut TcpStream) -> io::Result<String> {
    let len = usize::from(stream.read_u16_le().await?);
    if len > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a key of {len} bytes"),
        ));
    }
    let mut key = vec![0; len];
    stream.read_exact(&mut key).await?;
    String::from_utf8(key)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a key that is not text"))
}

/// A TCP socket of `addr`'s family.
fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// A producer's connection to its consumer.
pub(super) struct Sending {
    writer: BufWriter<TcpStream>,
}

/// Connects to the consumer of channel `key` at `address`.
pub(super) async fn connect(address: &str, key: &str) -> Result<Sending, String> {
    let cannot = |e: &dyn std::fmt::Display| {
        format!(
            "cannot connect to its consumer at {address} ({e}): its worker stopped or was lost, \
             or the workers cannot reach each other's exchange port (then run them with \
             --exchange nats)"
        )
    };
    let handshake = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        for addr in tokio::net::lookup_host(address).await? {
            let socket = socket_for(addr)?;
            socket.set_send_buffer_size(SOCKET_BUFFER)?;
            match socket.connect(addr).await {
                Ok(mut stream) => {
                    stream.set_nodelay(true)?;
                    let len = u16::try_from(key.len())
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a long key"))?;
                    stream.write_u16_le(len).await?;
                    stream.write_all(key.as_bytes()).await?;
                    let answer = stream.read_u8().await?;
                    return Ok((stream, answer));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let (stream, answer) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| cannot(&format!("no answer within {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| cannot(&e))?;
    if answer != ACCEPTED {
        return Err(format!(
            "its consumer at {address} does not wait for it (its run ended, or was replaced by a newer epoch)"
        ));
    }
    Ok(Sending {
        writer: BufWriter::with_capacity(WRITE_BUFFER, stream),
    })
}

impl Sending {
    /// Writes one frame (it may stay buffered until [`flush`](Self::flush)).
    pub(super) async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let len = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
        self.writer.write_u32_le(len).await?;
        self.writer.write_all(frame).await
    }

    /// Pushes out what is buffered.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }
}

/// A consumer's connection from its producer.
pub(super) struct Receiving {
    reader: BufReader<TcpStream>,
}

impl Receiving {
    /// The next frame; `None` when the producer closed the connection.
    pub(super) async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let len = match self.reader.read_u32_le().await {
            Ok(len) => len as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        if len > DIRECT_CHUNK + HEADER || len < HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes"),
            ));
        }
        let mut frame = vec![0; len];
        self.reader.read_exact(&mut frame).await?;
        Ok(Some(Bytes::from(frame)))
    }
}

/// The address of this host on the way to `server` (`host:port`): the one
/// peers that reach the same server are likeliest to reach it at. No packet
/// is sent; the routing table answers.
///
/// # Errors
/// The server's name does not resolve, or no route leads there.
pub(crate) fn local_ip_toward(server: &str) -> io::Result<IpAddr> {
    let target = server.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{server} resolves to nothing"),
        )
    })?;
    let probe = UdpSocket::bind(match target {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

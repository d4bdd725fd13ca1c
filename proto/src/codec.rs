//! The protobuf codec the generated services use: prost's, with smaller
//! buffers.
//!
//! tonic allocates the codec's buffer size eagerly for every RPC, in each
//! direction, and grows it only when a message needs more. Its default, 8 KiB,
//! is sized for bulk traffic; a health stream carries messages of a few
//! hundred bytes to a kilobyte, and a coordinator holds one stream per node.
//! 256 bytes keeps thousands of idle streams cheap; a buffer grows once to
//! the size of the largest message its stream carries, and stays there.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes allocated up front per RPC and direction.
const BUFFER_SIZE: usize = 256;
/// tonic's default: how much a stream encodes before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

#[derive(Debug, Clone, Copy)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        CompactCodec(PhantomData)
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

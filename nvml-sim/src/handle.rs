//! Opaque handles: a tag and the indexes they name, packed into a pointer-sized integer that is
//! never dereferenced. A handle whose tag does not match the call, or whose indexes name nothing
//! that exists now, is an invalid argument.

const BASE: usize = 0x5A00_0000_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Device = 1,
    MigDevice = 2,
    GpuInstance = 3,
    ComputeInstance = 4,
    EventSet = 5,
    GpmSample = 6,
}

/// What a handle names: tag, GPU index, GPU-instance id, and a last field (compute-instance id,
/// GPU-instance start slice, or event-set number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub tag: Tag,
    pub gpu: u32,
    pub gi: u32,
    pub x: u32,
}

impl Handle {
    pub fn new(tag: Tag, gpu: u32, gi: u32, x: u32) -> Handle {
        Handle { tag, gpu, gi, x }
    }

    pub fn encode<T>(self) -> *mut T {
        let v = BASE
            | ((self.tag as usize) << 52)
            | ((self.gpu as usize & 0xFFF) << 40)
            | ((self.gi as usize & 0xFFFF) << 24)
            | (self.x as usize & 0xFF_FFFF);
        v as *mut T
    }

    pub fn decode<T>(p: *mut T, tag: Tag) -> Option<Handle> {
        let v = p as usize;
        if v & 0xFF00_0000_0000_0000 != BASE || (v >> 52) & 0xF != tag as usize {
            return None;
        }
        Some(Handle {
            tag,
            gpu: ((v >> 40) & 0xFFF) as u32,
            gi: ((v >> 24) & 0xFFFF) as u32,
            x: (v & 0xFF_FFFF) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_refuse_other_tags() {
        let h = Handle::new(Tag::GpuInstance, 7, 13, 4);
        let p: *mut u8 = h.encode();
        assert_eq!(Handle::decode(p, Tag::GpuInstance), Some(h));
        assert_eq!(Handle::decode(p, Tag::Device), None);
        assert_eq!(
            Handle::decode(std::ptr::null_mut::<u8>(), Tag::Device),
            None
        );
        assert_eq!(Handle::decode(0x1234usize as *mut u8, Tag::Device), None);
    }
}

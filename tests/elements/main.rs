//! The shipped dib-helpers commands, run under bash and under busybox ash with
//! only busybox applets on PATH (as in a busybox-minimal root), on trees that
//! kiln's own hooks assembly builds.

mod helpers;

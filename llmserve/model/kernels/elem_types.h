/* Compiles a kernel file's per-element code once for float32 and once for bfloat16 tensors.
 *
 * C has no templates, and a function pointer for the loads would stop the compiler from
 * vectorizing the inner loops, so a file written as
 *
 *     #ifndef ELEM_T  ...shared part...  #define ELEM_SELF "this.c"  #include "elem_types.h"
 *     #else           ...code using ELEM_T, LOAD, STORE and NAME(fn)...  #endif
 *
 * is included into itself once per type: functions named NAME(fn) become fn_f32 and fn_bf16,
 * LOAD widens an element to float32, STORE rounds a float32 to the element type as torch does,
 * ELEM_IS_BF16 selects hand-vectorized bfloat16 paths.
 */
#include "bf16.h"

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)
#define NAME(fn) CONCAT(fn, ELEM_SUFFIX)

#define ELEM_T float
#define ELEM_SUFFIX f32
#define LOAD(x) (x)
#define STORE(x) (x)
#define ELEM_IS_BF16 0
#include ELEM_SELF
#undef ELEM_T
#undef ELEM_SUFFIX
#undef LOAD
#undef STORE
#undef ELEM_IS_BF16

#define ELEM_T uint16_t
#define ELEM_SUFFIX bf16
#define LOAD(x) bf16_to_f32(x)
#define STORE(x) f32_to_bf16(x)
#define ELEM_IS_BF16 1
#include ELEM_SELF

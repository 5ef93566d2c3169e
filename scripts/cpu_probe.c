/* Does one x86 instruction set really run here: the CPU has it *and* the OS enables it?
 *
 * /proc/cpuinfo lists what the CPU advertises; a VM's kernel may still refuse the register
 * state (AMX tile data is the case seen: cpuinfo lists amx_*, the first tile instruction dies
 * with SIGILL). So the instruction set is tried for real. Compile one program per set with
 * -DPROBE_<name> (so a compiler that lacks one target loses only that set) and run it: exit
 * status 0 means the set runs; a signal (SIGILL) or another status means it does not.
 * Built and run by exloop's engine/cpu_features.py before llama.cpp is compiled.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile int sink = 3;

#if defined(PROBE_sse42)
__attribute__((target("sse4.2"))) static void probe(void) {
    sink = (int)_mm_crc32_u32((unsigned)sink, 42u);
}
#elif defined(PROBE_avx)
__attribute__((target("avx"))) static void probe(void) {
    __m256 a = _mm256_set1_ps((float)sink);
    sink = (int)_mm256_cvtss_f32(_mm256_add_ps(a, a));
}
#elif defined(PROBE_f16c)
__attribute__((target("f16c"))) static void probe(void) {
    __m128i h = _mm_set1_epi16((short)sink);
    sink = (int)_mm_cvtss_f32(_mm_cvtph_ps(h));
}
#elif defined(PROBE_fma)
__attribute__((target("fma"))) static void probe(void) {
    __m128 a = _mm_set1_ps((float)sink);
    sink = (int)_mm_cvtss_f32(_mm_fmadd_ps(a, a, a));
}
#elif defined(PROBE_avx2)
__attribute__((target("avx2"))) static void probe(void) {
    __m256i a = _mm256_set1_epi32(sink);
    sink = _mm256_extract_epi32(_mm256_add_epi32(a, a), 0);
}
#elif defined(PROBE_bmi2)
__attribute__((target("bmi2"))) static void probe(void) {
    sink = (int)_pdep_u32((unsigned)sink, 0xf0f0u);
}
#elif defined(PROBE_avx_vnni)
__attribute__((target("avxvnni"))) static void probe(void) {
    __m256i a = _mm256_set1_epi32(sink);
    sink = _mm256_extract_epi32(_mm256_dpbusd_avx_epi32(a, a, a), 0);
}
#elif defined(PROBE_avx512)
/* GGML_AVX512 compiles with F, CD, VL, DQ and BW: use one instruction of each. */
__attribute__((target("avx512f,avx512cd,avx512vl,avx512dq,avx512bw"))) static void probe(void) {
    __m512i a = _mm512_set1_epi32(sink);
    __m512i b = _mm512_add_epi8(_mm512_conflict_epi32(a), a);
    __m256i c = _mm256_mask_add_epi32(_mm512_castsi512_si256(b), 0x5,
                                      _mm512_castsi512_si256(b), _mm512_castsi512_si256(a));
    __m512d d = _mm512_cvtepi64_pd(b);
    sink = _mm256_extract_epi32(c, 0) + (int)_mm512_reduce_add_pd(d);
}
#elif defined(PROBE_avx512_vbmi)
__attribute__((target("avx512f,avx512vbmi"))) static void probe(void) {
    __m512i a = _mm512_set1_epi32(sink);
    sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_permutexvar_epi8(a, a)));
}
#elif defined(PROBE_avx512_vnni)
__attribute__((target("avx512f,avx512vnni"))) static void probe(void) {
    __m512i a = _mm512_set1_epi32(sink);
    sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_dpbusd_epi32(a, a, a)));
}
#elif defined(PROBE_avx512_bf16)
__attribute__((target("avx512f,avx512bf16"))) static void probe(void) {
    __m512 a = _mm512_set1_ps((float)sink);
    __m512bh b = _mm512_cvtne2ps_pbh(a, a);
    sink = (int)_mm512_reduce_add_ps(_mm512_dpbf16_ps(a, b, b));
}
#elif defined(PROBE_amx)
#define ARCH_GET_XCOMP_SUPP 0x1021
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct tile_config {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* AMX needs the kernel to support tile data (XCOMP_SUPP bit 18) and to grant it to this
 * process (ARCH_REQ_XCOMP_PERM), as llama.cpp asks too; then a tile instruction must run. */
__attribute__((target("amx-tile,amx-int8,amx-bf16"))) static void probe(void) {
    unsigned long supported = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_SUPP, &supported) != 0 ||
        !(supported & (1ul << XFEATURE_XTILEDATA)))
        _exit(2);
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) _exit(3);
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette_id = 1;
    for (int t = 0; t < 3; t++) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    static int8_t in[16 * 64];
    static int32_t out[16 * 16];
    _tile_loadconfig(&config);
    _tile_zero(0);
    _tile_loadd(1, in, 64);
    _tile_loadd(2, in, 64);
    _tile_dpbssd(0, 1, 2);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, out, 64);
    _tile_release();
    sink = out[0];
}
#else
#error "compile with -DPROBE_<name>"
#endif

int main(void) {
    probe();
    return 0;
}

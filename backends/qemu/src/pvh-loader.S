# dep8's PVH loader (see loader.rs). QEMU starts it by its PVH entry:
# 32-bit protected mode, flat segments, paging and interrupts off, %ebx
# the PVH start_info. It reads the kernel's segments from the fw_cfg file
# opt/dep8/vmlinux into place with fw_cfg DMA, then jumps to the kernel's
# own PVH entry with %ebx as it was. The host fills in the table at
# `params` (all little-endian 32-bit words). On failure it writes a line
# to the debug console (port 0x402, QEMU's firmware log) and halts.
        .code32
        .text
        .globl  _start
_start:
        cli
        cld
        mov     %ebx, %ebp              # start_info, for the kernel
        mov     $stack_top, %esp
        # The fw_cfg file directory (key 0x19): a big-endian count, then
        # 64-byte entries: size (BE32), select (BE16), reserved, name[56].
        mov     $0x510, %dx
        mov     $0x19, %ax
        outw    %ax, %dx
        inc     %dx
        mov     $file, %edi
        mov     $4, %ecx
        rep insb
        mov     file, %esi
        bswap   %esi
next_file:
        test    %esi, %esi
        jz      no_file
        dec     %esi
        mov     $file, %edi
        mov     $64, %ecx
        rep insb
        mov     %esi, %ebx
        mov     $file+8, %esi
        mov     $name, %edi
        mov     $name_end-name, %ecx
        repe cmpsb
        mov     %ebx, %esi
        jne     next_file
        # The first transfer selects the file: (select << 16) | SELECT.
        movzwl  file+4, %eax
        xchg    %al, %ah
        shl     $16, %eax
        or      $0x08, %eax
        mov     %eax, select
        mov     $segments, %ebx
next_segment:
        cmpl    $0, count
        je      boot
        decl    count
        mov     $0x04, %eax             # SKIP to the segment's data
        mov     0(%ebx), %ecx
        call    dma
        mov     $0x02, %eax             # READ it to its address
        mov     8(%ebx), %ecx
        mov     4(%ebx), %edi
        call    dma
        mov     4(%ebx), %edi           # zero the rest of its memory
        add     8(%ebx), %edi
        mov     12(%ebx), %ecx
        xor     %eax, %eax
        rep stosb
        add     $16, %ebx
        jmp     next_segment
boot:
        mov     %ebp, %ebx
        jmp     *entry

# One fw_cfg DMA transfer: control bits in %eax, length in %ecx, guest
# address in %edi. The control word and the address are big-endian.
dma:
        or      select, %eax
        movl    $0, select
        bswap   %eax
        mov     %eax, access
        bswap   %ecx
        mov     %ecx, access+4
        movl    $0, access+8
        bswap   %edi
        mov     %edi, access+12
        xor     %eax, %eax
        mov     $0x514, %dx
        outl    %eax, %dx
        mov     $access, %eax
        bswap   %eax
        mov     $0x518, %dx
        outl    %eax, %dx
1:      mov     access, %eax
        test    %eax, %eax
        jz      2f
        test    $0x01000000, %eax       # the error bit
        jz      1b
        mov     $dma_failed, %esi
        mov     $dma_failed_end-dma_failed, %ecx
        jmp     halt
2:      ret

no_file:
        mov     $missing, %esi
        mov     $missing_end-missing, %ecx
halt:
        mov     $0x402, %dx
        rep outsb
1:      hlt
        jmp     1b

name:   .asciz  "opt/dep8/vmlinux"
name_end:
missing:
        .ascii  "dep8 PVH loader: no fw_cfg file opt/dep8/vmlinux\n"
missing_end:
dma_failed:
        .ascii  "dep8 PVH loader: fw_cfg DMA failed\n"
dma_failed_end:
        .balign 8
access: .fill   16, 1, 0
file:   .fill   64, 1, 0
select: .long   0
stack:  .fill   64, 1, 0
stack_top:
        .balign 4
# Filled in by the host: the kernel's PVH entry, the number of segments,
# then for each in file order: bytes to skip before it, its physical
# address, its size in the file, and the bytes to zero after it.
params:
entry:  .long   0
count:  .long   0
segments:

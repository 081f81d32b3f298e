; The KVM probe guest (512-byte boot sector), assembled with `nasm -f bin -o kvm_probe.img kvm_probe.asm`.
; It makes BIOS calls, enters protected mode, executes iretd, returns to real mode, calls the
; BIOS again and exits QEMU through isa-debug-exit with code (0x2a << 1) | 1 = 85. A nested
; KVM that cannot run real-mode/mode-switch code fails here with "KVM internal error".
bits 16
org 0x7c00
start:
  cli
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7c00
  sti
  mov ah, 0x0e
  mov al, 'K'
  int 0x10
  cli
  lgdt [gdt_desc]
  mov eax, cr0
  or eax, 1
  mov cr0, eax
  jmp 0x08:pm
bits 32
pm:
  mov ax, 0x10
  mov ds, ax
  mov ss, ax
  mov esp, 0x7c00
  pushfd
  push dword 0x08
  push dword after_iret
  iretd
after_iret:
  jmp 0x18:pm16
bits 16
pm16:
  mov ax, 0x20
  mov ds, ax
  mov ss, ax
  mov eax, cr0
  and eax, 0xfffffffe
  mov cr0, eax
  jmp 0x0000:rm
rm:
  xor ax, ax
  mov ds, ax
  mov ss, ax
  sti
  mov ah, 0x0e
  mov al, 'V'
  int 0x10
  mov dx, 0x501
  mov al, 0x2a
  out dx, al
  hlt
  jmp $
align 8
gdt:
  dq 0
  dq 0x00cf9a000000ffff
  dq 0x00cf92000000ffff
  dq 0x00009a000000ffff
  dq 0x000092000000ffff
gdt_desc:
  dw gdt_desc - gdt - 1
  dd gdt
times 510-($-$$) db 0
dw 0xaa55

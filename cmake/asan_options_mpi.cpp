// Linked into the programs that initialise MPI (ndif-sweep and the MPI tests), in sanitizer builds
// only. OpenMPI loads its components with dlopen, keeps allocations until exit and unloads them in
// MPI_Finalize, so LeakSanitizer reports them with unknown frames that no suppression can name.
// Leak checking stays on for every other program; ASan's and UBSan's other checks stay on here too.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }

export type { EmulatedActivities as MigrationActivities } from './emulated';
export { createEmulatedActivities as createMigrationActivities } from './emulated';
export type { MigrationContext } from './emulated';

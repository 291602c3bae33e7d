export * from './types';
export * from './convergence';
export * from './switch';
export * from './ferry-switch';
export * from './static-data';
